//! Packing a function directory into a package, deterministically: the same
//! tree gives the same bytes on any machine, whatever the mtimes or owners.

use std::borrow::Cow;
use std::collections::BTreeMap;
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

pub(crate) enum Item<'a> {
    Dir,
    /// `data` is `None` for a file read from the directory being packed.
    File {
        exec: bool,
        data: Option<&'a [u8]>,
    },
    Symlink {
        target: String,
    },
}

/// One file of a package built in memory (from a zip upload, an inline
/// action's code, a generated `flick.toml`): see [`pack_files`].
#[derive(Clone, PartialEq, Eq)]
pub struct PackedFile {
    /// Relative path with `/` separators, e.g. `lib/util.py`.
    pub path: String,
    /// The file's bytes; for a symlink, its target.
    pub contents: Vec<u8>,
    /// Owner exec bit (packed as mode 0o755 instead of 0o644).
    pub exec: bool,
    /// `contents` is a symlink target, not data.
    pub symlink: bool,
}

impl PackedFile {
    /// A plain (non-executable) file.
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        Self { path: path.into(), contents: contents.into(), exec: false, symlink: false }
    }

    /// An executable file (a `bootstrap`, a script).
    pub fn executable(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        Self { path: path.into(), contents: contents.into(), exec: true, symlink: false }
    }

    /// A symlink to `target`, relative to the link's directory.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self { path: path.into(), contents: target.into().into_bytes(), exec: false, symlink: true }
    }
}

impl std::fmt::Debug for PackedFile {
    // The contents can be megabytes: shown by size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("PackedFile");
        out.field("path", &self.path).field("exec", &self.exec);
        if self.symlink {
            out.field("symlink", &String::from_utf8_lossy(&self.contents));
        } else {
            out.field("bytes", &self.contents.len());
        }
        out.finish()
    }
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

/// Packs a revision's code directory as it runs, dependencies installed,
/// for another node to unpack: the same deterministic tar.gz as
/// [`pack_dir`], but nothing is left out (no built-in ignores, no
/// `.flickignore`: what was ignored at deploy is not there, and what the
/// installers wrote, compiled `.pyc` files included, must all arrive).
pub fn pack_installed(dir: &Path) -> Result<Vec<u8>, PackageError> {
    check_manifest(dir)?;
    let items = collect(dir, &IgnoreRules::none())?;
    write_archive(dir, &items)
}

/// Packs files held in memory into a package, the same deterministic
/// tar.gz `pack_dir` writes (sorted, fixed metadata, parent directories
/// listed), so surfaces that receive code in another form (a Lambda zip,
/// an OpenWhisk action's inline code) deploy through the one deploy path.
///
/// `files` must hold a regular `flick.toml` at the root (usually generated
/// by the caller). The rules `unpack` applies are checked here, naming the
/// file: relative paths without `..`, no path twice, no file below a file
/// or a symlink, symlink targets inside the package with `..` only in
/// front. The order of `files` does not matter.
pub fn pack_files(files: &[PackedFile]) -> Result<Vec<u8>, PackageError> {
    let tree = file_tree(files)?;
    match tree.get(MANIFEST_FILE) {
        Some(Item::File { .. }) => {}
        _ => return Err(PackageError::MissingManifest),
    }
    let mut items: Vec<(String, Item)> = tree.into_iter().collect();
    items.sort_by(|(a, _), (b, _)| a.split('/').cmp(b.split('/')));
    write_archive(Path::new("<memory>"), &items)
}

/// Checks `files` as one tree and returns it by normalised path, with the
/// parent directories the paths imply.
pub(crate) fn file_tree(files: &[PackedFile]) -> Result<BTreeMap<String, Item<'_>>, PackageError> {
    let mut tree: BTreeMap<String, Item> = BTreeMap::new();
    for file in files {
        let reject = |reason: &str| PackageError::unsafe_entry(&file.path, reason);
        let components = paths::entry_components(&file.path).map_err(reject)?;
        let Some((_, parents)) = components.split_last() else {
            return Err(reject("the path names the package root"));
        };
        let mut key = String::new();
        for parent in parents {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(parent);
            match tree.get(&key) {
                Some(Item::Dir) => {}
                None => {
                    tree.insert(key.clone(), Item::Dir);
                }
                Some(Item::Symlink { .. }) => {
                    return Err(reject(&format!(
                        "its parent `{key}` is a symlink; nothing may be written through one"
                    )));
                }
                Some(Item::File { .. }) => return Err(reject(&format!("its parent `{key}` is a file"))),
            }
        }
        let item = if file.symlink {
            let target =
                std::str::from_utf8(&file.contents).map_err(|_| reject("the symlink target is not valid utf-8"))?;
            Item::Symlink { target: paths::symlink_target(parents, target).map_err(|r| reject(&r))? }
        } else {
            Item::File { exec: file.exec, data: Some(&file.contents) }
        };
        let key = components.join("/");
        match tree.get(&key) {
            None => {}
            Some(Item::Dir) => return Err(reject("a directory of that name holds other files")),
            Some(_) => return Err(reject("duplicate entry: the path appears twice")),
        }
        tree.insert(key, item);
    }
    Ok(tree)
}

fn check_manifest(dir: &Path) -> Result<(), PackageError> {
    let path = dir.join(MANIFEST_FILE);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(PackageError::ManifestNotAFile { path }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(PackageError::NoManifest { dir: dir.to_path_buf() }),
        Err(e) => Err(PackageError::Io { path, source: e }),
    }
}

fn load_ignore_rules(dir: &Path) -> Result<IgnoreRules, PackageError> {
    let mut rules = IgnoreRules::builtin();
    let path = dir.join(IGNORE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            rules.add_lines(&text).map_err(|(line, reason)| PackageError::IgnorePattern { path, line, reason })?
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(PackageError::Io { path, source: e }),
    }
    Ok(rules)
}

/// Walks `dir` and returns what goes into the package, sorted component by
/// component so every directory comes right before its contents.
fn collect(dir: &Path, rules: &IgnoreRules) -> Result<Vec<(String, Item<'static>)>, PackageError> {
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

            // The manifest is never ignored: a package without it would only
            // be refused by the server.
            let is_manifest = rel == MANIFEST_FILE && kind.is_file();
            if !is_manifest && rules.is_ignored(&rel, kind.is_dir()) {
                continue;
            }
            if kind.is_dir() {
                pending.push(rel.clone());
                items.push((rel, Item::Dir));
            } else if kind.is_file() {
                let mode = entry.metadata().map_err(PackageError::io(&abs))?.permissions().mode();
                items.push((rel, Item::File { exec: mode & 0o100 != 0, data: None }));
            } else if kind.is_symlink() {
                let target = symlink_target(&abs, &rel)?;
                items.push((rel, Item::Symlink { target }));
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
            Item::File { exec, data } => {
                // Read whole so the size in the header is the size written,
                // even if the file changes while we pack.
                let data = match data {
                    Some(data) => Cow::Borrowed(*data),
                    None => Cow::Owned(fs::read(&path).map_err(PackageError::io(&path))?),
                };
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if *exec { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, rel, data.as_ref())
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use flate2::Compression;

    use super::*;
    use crate::testutil::{MANIFEST, RawTar, function_dir, gzip, listing, write_mode};
    use crate::{UnpackLimits, Unpacked, unpack};

    fn unpack_fresh(archive: &[u8]) -> (tempfile::TempDir, Unpacked) {
        let dest = tempfile::tempdir().unwrap();
        let unpacked = unpack(archive, dest.path(), &UnpackLimits::default()).unwrap();
        (dest, unpacked)
    }

    fn hash_of(dir: &Path) -> String {
        unpack_fresh(&pack_dir(dir).unwrap()).1.hash
    }

    /// Paths in the archive, in archive order (directories without their
    /// trailing `/`).
    fn archive_paths(archive: &[u8]) -> Vec<String> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
        tar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
            .collect()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trip_keeps_content_exec_bits_and_symlinks() {
        let src = function_dir();
        let archive = pack_dir(src.path()).unwrap();
        let (dest, unpacked) = unpack_fresh(&archive);
        let out = dest.path();

        assert_eq!(unpacked.manifest_text, MANIFEST);
        assert_eq!(unpacked.files, 4);
        assert!(unpacked.hash.starts_with("sha256:"));
        for file in ["flick.toml", "main.py", "run.sh", "lib/util.py"] {
            assert_eq!(fs::read(out.join(file)).unwrap(), fs::read(src.path().join(file)).unwrap(), "{file}");
        }
        let expected_bytes: u64 = ["flick.toml", "main.py", "run.sh", "lib/util.py"]
            .iter()
            .map(|f| fs::metadata(src.path().join(f)).unwrap().len())
            .sum();
        assert_eq!(unpacked.bytes, expected_bytes);

        // Only the owner exec bit survives, widened to the fixed modes.
        assert_eq!(mode_of(&out.join("run.sh")), 0o755);
        assert_eq!(mode_of(&out.join("main.py")), 0o644);
        assert_eq!(mode_of(&out.join("lib")), 0o755);

        let link = out.join("util.py");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("lib/util.py"));
        assert_eq!(fs::read_to_string(&link).unwrap(), "X = 1\n");
    }

    #[test]
    fn installed_code_travels_whole_ignored_names_included() {
        let src = function_dir();
        fs::write(src.path().join(".flickignore"), "*.so\n").unwrap();
        fs::create_dir_all(src.path().join("__pycache__")).unwrap();
        fs::write(src.path().join("__pycache__/main.cpython-311.pyc"), b"pyc").unwrap();
        fs::write(src.path().join("native.so"), b"ELF").unwrap();
        let (dest, _) = unpack_fresh(&pack_installed(src.path()).unwrap());
        assert_eq!(fs::read(dest.path().join("native.so")).unwrap(), b"ELF");
        assert_eq!(fs::read(dest.path().join("__pycache__/main.cpython-311.pyc")).unwrap(), b"pyc");
        let (plain, _) = unpack_fresh(&pack_dir(src.path()).unwrap());
        assert!(!plain.path().join("native.so").exists(), "pack_dir still honours .flickignore");
    }

    #[test]
    fn archive_is_sorted_with_fixed_metadata() {
        let src = function_dir();
        fs::create_dir(src.path().join("a-b")).unwrap();
        fs::write(src.path().join("a-b/x"), "x").unwrap();
        fs::create_dir(src.path().join("a")).unwrap();
        fs::write(src.path().join("a/x"), "x").unwrap();
        let archive = pack_dir(src.path()).unwrap();

        assert_eq!(
            archive_paths(&archive),
            ["a", "a/x", "a-b", "a-b/x", "flick.toml", "lib", "lib/util.py", "main.py", "run.sh", "util.py"]
        );
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!(header.uid().unwrap(), 0);
            assert_eq!(header.gid().unwrap(), 0);
        }
    }

    #[test]
    fn packing_is_deterministic_and_ignores_mtimes() {
        let src = function_dir();
        let first = pack_dir(src.path()).unwrap();
        assert_eq!(first, pack_dir(src.path()).unwrap());

        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for file in ["flick.toml", "main.py", "lib/util.py"] {
            fs::File::options().write(true).open(src.path().join(file)).unwrap().set_modified(old).unwrap();
        }
        let touched = pack_dir(src.path()).unwrap();
        assert_eq!(first, touched);
        assert_eq!(unpack_fresh(&first).1.hash, unpack_fresh(&touched).1.hash);
    }

    #[test]
    fn hash_changes_with_any_byte_exec_bit_path_or_link() {
        let src = function_dir();
        let root = src.path();
        let mut seen = vec![hash_of(root)];
        let mut changed = |what: &str| {
            let hash = hash_of(root);
            assert!(!seen.contains(&hash), "hash did not change after: {what}");
            seen.push(hash);
        };

        fs::write(root.join("main.py"), "def handler(event):\n    return event \n").unwrap();
        changed("a byte");
        fs::set_permissions(root.join("main.py"), fs::Permissions::from_mode(0o744)).unwrap();
        changed("the exec bit");
        fs::rename(root.join("lib/util.py"), root.join("lib/utils.py")).unwrap();
        changed("a path");
        fs::remove_file(root.join("util.py")).unwrap();
        std::os::unix::fs::symlink("lib/utils.py", root.join("util.py")).unwrap();
        changed("a link target");
        fs::create_dir(root.join("empty")).unwrap();
        changed("an empty directory");
    }

    #[test]
    fn group_and_other_bits_do_not_change_the_hash() {
        let src = function_dir();
        let before = hash_of(src.path());
        fs::set_permissions(src.path().join("main.py"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(before, hash_of(src.path()));
    }

    #[test]
    fn another_tool_gets_the_same_hash() {
        let src = function_dir();
        let ours = hash_of(src.path());

        // Reversed order, `./` prefixes, no directory entries, real mtimes
        // and owners, a pax global header, other modes and compression.
        let mut theirs = RawTar::new().entry(b"pax_global_header", tar::EntryType::XGlobalHeader, b"", b"", 0o644);
        theirs = theirs
            .symlink("./util.py", "./lib//util.py")
            .entry(b"./run.sh", tar::EntryType::Regular, b"", b"#!/bin/sh\necho hi\n", 0o700)
            .entry(b"./main.py", tar::EntryType::Regular, b"", b"def handler(event):\n    return event\n", 0o664)
            .file("./lib/util.py", b"X = 1\n")
            .file("flick.toml", MANIFEST.as_bytes())
            .dir("./");
        let mut raw = theirs.tar();
        // Owners and mtimes differ per entry in real archives; the tar
        // crate's own header setters keep the checksum right.
        let mut tar = tar::Archive::new(raw.as_slice());
        let mut rebuilt = tar::Builder::new(Vec::new());
        for entry in tar.entries().unwrap().raw(true) {
            let entry = entry.unwrap();
            let mut header = entry.header().clone();
            header.set_mtime(1_700_000_000);
            header.set_uid(1000);
            header.set_gid(100);
            header.set_cksum();
            rebuilt.append(&header, entry).unwrap();
        }
        raw = rebuilt.into_inner().unwrap();

        let (_dest, unpacked) = unpack_fresh(&gzip(&raw, Compression::best()));
        assert_eq!(unpacked.hash, ours);
    }

    #[test]
    fn missing_manifest_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.py"), "").unwrap();
        let err = pack_dir(dir.path()).unwrap_err();
        assert!(matches!(err, PackageError::NoManifest { .. }));
        let message = err.to_string();
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
        assert!(message.contains("try `flick new NAME`"), "{message}");

        let err = pack_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, PackageError::NoManifest { .. }), "{err}");
    }

    #[test]
    fn manifest_must_be_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real.toml"), MANIFEST).unwrap();
        std::os::unix::fs::symlink("real.toml", dir.path().join("flick.toml")).unwrap();
        let err = pack_dir(dir.path()).unwrap_err();
        assert!(matches!(err, PackageError::ManifestNotAFile { .. }), "{err}");
    }

    #[test]
    fn flickignore_rules_apply() {
        let src = function_dir();
        let root = src.path();
        fs::write(
            root.join(".flickignore"),
            "# local junk\n*.log\n/build/\ntmp/\n!keep.log\ndocs/**\n!docs/index.md\n**/fixtures\nflick.toml\n",
        )
        .unwrap();
        for dir in [
            ".git",
            "build",
            "src/build",
            "src/tmp",
            "tmp",
            "docs/api",
            "a/b/fixtures",
            "__pycache__",
            "node_modules/.cache",
            "node_modules/x",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [
            ".git/HEAD",
            "app.log",
            "src/deep.log",
            "keep.log",
            "build/out.js",
            "src/build/out.js",
            "src/tmp/t",
            "tmp",
            "docs/api/x.md",
            "docs/index.md",
            "a/b/fixtures/f.json",
            "__pycache__/m.pyc",
            "mod.pyc",
            "node_modules/.cache/c",
            "node_modules/x/index.js",
        ] {
            // `tmp` exists as a directory; `tmp/` only ignores directories.
            if file == "tmp" {
                fs::write(root.join("src/tmp-file"), "").unwrap();
                continue;
            }
            fs::write(root.join(file), "").unwrap();
        }

        let paths = archive_paths(&pack_dir(root).unwrap());
        let expected = [
            ".flickignore",
            "a",
            "a/b",
            "docs",
            "docs/index.md",
            "flick.toml", // listed in .flickignore, packed anyway
            "keep.log",
            "lib",
            "lib/util.py",
            "main.py",
            "node_modules",
            "node_modules/x",
            "node_modules/x/index.js",
            "run.sh",
            "src",
            "src/build",
            "src/build/out.js",
            "src/tmp-file",
            "util.py",
        ];
        assert_eq!(paths, expected);
    }

    #[test]
    fn ignored_directories_are_not_descended() {
        let src = function_dir();
        fs::write(src.path().join(".flickignore"), "build\n!build/keep\n").unwrap();
        fs::create_dir(src.path().join("build")).unwrap();
        fs::write(src.path().join("build/keep"), "").unwrap();
        let paths = archive_paths(&pack_dir(src.path()).unwrap());
        assert!(!paths.iter().any(|p| p.starts_with("build")), "{paths:?}");
    }

    #[test]
    fn bad_ignore_line_is_named() {
        let src = function_dir();
        fs::write(src.path().join(".flickignore"), "*.log\n!\n").unwrap();
        let message = pack_dir(src.path()).unwrap_err().to_string();
        assert!(message.contains(".flickignore, line 2"), "{message}");
    }

    #[test]
    fn escaping_symlinks_are_refused_unless_ignored() {
        let src = function_dir();
        std::os::unix::fs::symlink("/usr/bin/python3", src.path().join("python")).unwrap();
        let message = pack_dir(src.path()).unwrap_err().to_string();
        assert!(message.contains("python") && message.contains("absolute"), "{message}");

        fs::write(src.path().join(".flickignore"), "python\n").unwrap();
        pack_dir(src.path()).unwrap();

        std::os::unix::fs::symlink("../../outside", src.path().join("lib/up")).unwrap();
        let message = pack_dir(src.path()).unwrap_err().to_string();
        assert!(message.contains("lib/up") && message.contains("outside the package"), "{message}");
    }

    #[test]
    fn sockets_are_skipped() {
        let src = function_dir();
        let _listener = std::os::unix::net::UnixListener::bind(src.path().join("app.sock")).unwrap();
        let paths = archive_paths(&pack_dir(src.path()).unwrap());
        assert!(!paths.iter().any(|p| p == "app.sock"), "{paths:?}");
    }

    #[test]
    fn long_paths_and_link_targets_round_trip() {
        let src = function_dir();
        let deep = format!("{}/{}", "d".repeat(80), "e".repeat(80));
        fs::create_dir_all(src.path().join(&deep)).unwrap();
        let file = format!("{deep}/{}.txt", "f".repeat(120));
        write_mode(&src.path().join(&file), b"deep", 0o755);
        let target = format!("{}/{}.txt", "e".repeat(80), "f".repeat(120));
        std::os::unix::fs::symlink(&target, src.path().join("d".repeat(80)).join("link")).unwrap();

        let (dest, _) = unpack_fresh(&pack_dir(src.path()).unwrap());
        assert_eq!(fs::read(dest.path().join(&file)).unwrap(), b"deep");
        assert_eq!(mode_of(&dest.path().join(&file)), 0o755);
        let link = dest.path().join("d".repeat(80)).join("link");
        assert_eq!(fs::read_link(link).unwrap(), Path::new(&target));
        assert_eq!(listing(dest.path()).len(), listing(src.path()).len());
    }

    #[test]
    fn pack_files_matches_pack_dir() {
        let src = function_dir();
        let files = [
            PackedFile::symlink("util.py", "lib/util.py"),
            PackedFile::file("main.py", fs::read(src.path().join("main.py")).unwrap()),
            PackedFile::executable("run.sh", fs::read(src.path().join("run.sh")).unwrap()),
            PackedFile::file("lib/util.py", "X = 1\n"),
            PackedFile::file("flick.toml", MANIFEST),
        ];
        let archive = pack_files(&files).unwrap();
        // The same bytes as packing the same tree from disk, in any order.
        assert_eq!(archive, pack_dir(src.path()).unwrap());
        let mut reversed = files.to_vec();
        reversed.reverse();
        assert_eq!(pack_files(&reversed).unwrap(), archive);
        assert_eq!(unpack_fresh(&archive).1.hash, hash_of(src.path()));
    }

    #[test]
    fn pack_files_refuses_what_unpack_would() {
        let manifest = PackedFile::file("flick.toml", MANIFEST);
        let refused = |extra: Vec<PackedFile>, expected: &str| {
            let mut files = vec![manifest.clone()];
            files.extend(extra);
            let err = pack_files(&files).expect_err(expected).to_string();
            assert!(err.contains(expected), "`{err}` should contain `{expected}`");
        };
        refused(vec![PackedFile::file("../x", "")], "`..`");
        refused(vec![PackedFile::file("/x", "")], "absolute");
        refused(vec![PackedFile::file("", "")], "empty");
        refused(vec![PackedFile::file("./", "")], "root");
        refused(vec![PackedFile::file("a", ""), PackedFile::file("./a", "")], "duplicate");
        refused(vec![PackedFile::file("a", ""), PackedFile::file("a/b", "")], "parent `a` is a file");
        refused(vec![PackedFile::file("a/b", ""), PackedFile::file("a", "")], "directory");
        refused(vec![PackedFile::symlink("l", "../out")], "outside");
        refused(vec![PackedFile::symlink("l", "/etc")], "absolute");
        refused(vec![PackedFile::symlink("l", "lib"), PackedFile::file("l/x", "")], "symlink");
        assert!(matches!(pack_files(&[PackedFile::file("main.py", "")]), Err(PackageError::MissingManifest)));
        let dir_manifest = [PackedFile::file("flick.toml/x", "")];
        assert!(matches!(pack_files(&dir_manifest), Err(PackageError::MissingManifest)));
    }
}
