//! Unpacking an untrusted package: within limits, and never writing outside
//! the destination, whatever the archive says.
//!
//! The tar stream is read in raw mode: long-name and pax headers are handled
//! here, with a size cap, rather than by the tar crate (which would read a
//! header of any declared size into memory). Entries are then written by
//! hand, not with `Entry::unpack`, so every rule below is checked right
//! before the write it guards.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flick_core::MANIFEST_FILE;
use sha2::{Digest, Sha256};
use tar::{Entry, EntryType};

use crate::error::PackageError;
use crate::hash::{Node, content_hash};
use crate::paths;

/// Long names and pax records are a few hundred bytes in practice; anything
/// bigger is an attempt to make us buffer it.
const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Extension headers allowed in a row before an entry (GNU long name and
/// link, pax local, pax global: a handful at most).
const MAX_EXTENSION_RUN: u32 = 8;

/// Options/limits for unpacking untrusted archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Size of the compressed archive.
    pub max_archive_bytes: u64,
    /// Total size of the regular files once unpacked.
    pub max_unpacked_bytes: u64,
    /// Number of entries (files, directories, symlinks).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// Lambda's limits for zip packages: 50 MiB compressed, 250 MiB unpacked.
    fn default() -> Self {
        Self { max_archive_bytes: 50 << 20, max_unpacked_bytes: 250 << 20, max_entries: 20_000 }
    }
}

/// Result of unpacking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `"sha256:<hex>"` over the unpacked tree; see [`unpack`].
    pub hash: String,
    /// The text of the root `flick.toml`.
    pub manifest_text: String,
    /// Number of regular files.
    pub files: u64,
    /// Total size of the regular files.
    pub bytes: u64,
}

/// Unpacks gzip'd tar bytes into `dest` (which must exist and be empty) and
/// computes the content hash.
///
/// Every entry is checked before anything is written for it, and each
/// violation is an error naming the entry; nothing is ever written outside
/// `dest`. On error `dest` may hold part of the package: the caller removes
/// it.
///
/// - paths must be relative, without `..` and not empty (`./` prefixes are
///   fine; a `./` directory entry, as `tar -C dir .` writes, is the root);
/// - only regular files, directories and symlinks (hard links, devices,
///   fifos and sparse files are refused; pax global headers are skipped);
/// - a symlink's target must be relative and resolve inside the package,
///   with `..` only in front (see `paths::symlink_target`);
/// - no entry may be written through a symlink or over one, nor appear twice;
/// - the limits: compressed size, total file size (checked from each header
///   and counted while reading, so a gzip bomb is stopped at once), entries;
/// - `flick.toml` must be a regular file at the root;
/// - files get 0o755 if the owner exec bit is set, else 0o644; dirs 0o755.
///
/// The hash covers the sorted tree: each entry's kind, path, exec bit and
/// content (file bytes or link target), length-prefixed. So any tool, entry
/// order, mtime, owner or compression level gives the same hash for the same
/// tree, and any change to a path, byte, exec bit or link changes it.
pub fn unpack(archive: &[u8], dest: &Path, limits: &UnpackLimits) -> Result<Unpacked, PackageError> {
    let size = archive.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(PackageError::ArchiveTooLarge { size, limit: limits.max_archive_bytes });
    }
    check_dest(dest)?;

    // Multi-member gzip is valid gzip (`pigz`, concatenated streams).
    let mut archive = tar::Archive::new(MultiGzDecoder::new(archive));
    let entries = archive.entries().map_err(|e| PackageError::corrupt(e.to_string()))?.raw(true);
    let mut unpacker = Unpacker { dest, limits, tree: BTreeMap::new(), entries: 0, files: 0, bytes: 0, manifest: None };
    let mut extensions = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| PackageError::corrupt(e.to_string()))?;
        if is_extension(entry.header().entry_type()) {
            extensions.read(&mut entry)?;
        } else {
            unpacker.entry(&mut entry, std::mem::take(&mut extensions))?;
        }
    }
    if extensions.count > 0 {
        return Err(PackageError::corrupt("it ends with extension headers but no entry they describe"));
    }
    unpacker.finish()
}

fn check_dest(dest: &Path) -> Result<(), PackageError> {
    let mut listing = fs::read_dir(dest).map_err(PackageError::io(dest))?;
    if listing.next().is_some() {
        return Err(PackageError::DestNotEmpty { path: dest.to_path_buf() });
    }
    Ok(())
}

fn is_extension(kind: EntryType) -> bool {
    kind.is_gnu_longname()
        || kind.is_gnu_longlink()
        || kind.is_pax_local_extensions()
        || kind.is_pax_global_extensions()
}

/// What the extension headers before an entry say about it.
#[derive(Default)]
struct Extensions {
    count: u32,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

impl Extensions {
    fn read<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), PackageError> {
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        self.count += 1;
        if self.count > MAX_EXTENSION_RUN {
            return Err(PackageError::unsafe_entry(
                &name,
                format!("more than {MAX_EXTENSION_RUN} extension headers in a row"),
            ));
        }
        let size = entry.size();
        if size > MAX_EXTENSION_BYTES {
            return Err(PackageError::unsafe_entry(
                &name,
                format!("extension header of {size} bytes (at most {MAX_EXTENSION_BYTES} allowed)"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(|e| PackageError::corrupt(format!("reading `{name}`: {e}")))?;

        if kind.is_gnu_longname() {
            set_once(&mut self.long_name, until_nul(data), &name)?;
        } else if kind.is_gnu_longlink() {
            set_once(&mut self.long_link, until_nul(data), &name)?;
        } else if kind.is_pax_local_extensions() {
            self.read_pax(&data, &name)?;
        }
        // A pax global header describes the archive (`git archive` puts the
        // commit id there), not the files: nothing in it is used.
        Ok(())
    }

    fn read_pax(&mut self, data: &[u8], name: &str) -> Result<(), PackageError> {
        for record in tar::PaxExtensions::new(data) {
            let record = record.map_err(|_| PackageError::unsafe_entry(name, "malformed pax extension header"))?;
            let value = record.value_bytes();
            match record.key_bytes() {
                b"path" => set_once(&mut self.pax_path, value.to_vec(), name)?,
                b"linkpath" => set_once(&mut self.pax_link, value.to_vec(), name)?,
                b"size" => {
                    let size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    let size = size.ok_or_else(|| {
                        PackageError::unsafe_entry(
                            name,
                            format!("pax size `{}` is not a number", String::from_utf8_lossy(value)),
                        )
                    })?;
                    self.pax_size = Some(size);
                }
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(PackageError::unsafe_entry(name, "sparse files are not supported"));
                }
                // mtime, uid, uname, xattrs...: none of them is kept.
                _ => {}
            }
        }
        Ok(())
    }
}

/// Two names for one entry would let two readers see two different archives.
fn set_once(slot: &mut Option<Vec<u8>>, value: Vec<u8>, name: &str) -> Result<(), PackageError> {
    if slot.is_some() {
        return Err(PackageError::unsafe_entry(name, "a second extension header names the same entry"));
    }
    *slot = Some(value);
    Ok(())
}

/// GNU long names are NUL-terminated.
fn until_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a UnpackLimits,
    /// Everything unpacked so far, by normalised path: spots duplicates and
    /// symlinked parents without trusting the disk alone, and is what gets
    /// hashed.
    tree: BTreeMap<String, Node>,
    entries: u64,
    files: u64,
    bytes: u64,
    manifest: Option<Vec<u8>>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut Entry<'_, R>, extensions: Extensions) -> Result<(), PackageError> {
        let header = entry.header();
        let raw_path = extensions.pax_path.or(extensions.long_name).unwrap_or_else(|| header.path_bytes().into_owned());
        let raw_target =
            extensions.pax_link.or(extensions.long_link).or_else(|| header.link_name_bytes().map(|b| b.into_owned()));
        let entry_type = header.entry_type();
        let mode = header.mode();
        let size = entry.size();

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(PackageError::TooManyEntries { limit: self.limits.max_entries });
        }
        let Ok(path) = std::str::from_utf8(&raw_path) else {
            let shown = String::from_utf8_lossy(&raw_path);
            return Err(PackageError::unsafe_entry(&shown, "the path is not valid utf-8"));
        };
        let reject = |reason: &str| PackageError::unsafe_entry(path, reason);

        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => return Err(reject("hard links are not allowed; store a copy or a symlink")),
            EntryType::Char | EntryType::Block => return Err(reject("device files are not allowed")),
            EntryType::Fifo => return Err(reject("fifos are not allowed")),
            EntryType::GNUSparse => return Err(reject("sparse files are not supported")),
            other => {
                let byte = other.as_byte();
                let shown = if byte.is_ascii_graphic() { (byte as char).to_string() } else { format!("\\x{byte:02x}") };
                return Err(reject(&format!("entry type `{shown}` is not supported")));
            }
        };
        if let Some(pax_size) = extensions.pax_size
            && pax_size != size
        {
            return Err(reject(&format!("its pax size ({pax_size}) disagrees with its header size ({size})")));
        }
        // Data after a directory or symlink header would still have to be
        // decompressed to skip it: refused rather than counted.
        if kind != Kind::File && size != 0 {
            return Err(reject(&format!("a directory or symlink entry carrying {size} bytes of data")));
        }

        let components = paths::entry_components(path).map_err(reject)?;
        let Some((_, parents)) = components.split_last() else {
            // `./`: the root itself, which exists already.
            return if kind == Kind::Dir { Ok(()) } else { Err(reject("the path names the package root")) };
        };
        if kind == Kind::File && path.ends_with('/') {
            return Err(reject("a file entry whose path ends with `/`"));
        }
        let key = components.join("/");

        self.make_parents(path, parents)?;
        let full = self.dest.join(&key);
        match self.tree.get_mut(&key) {
            None => {}
            // Implied by a deeper entry earlier on; now listed explicitly.
            Some(Node::Dir { explicit }) if kind == Kind::Dir && !*explicit => {
                *explicit = true;
                return Ok(());
            }
            Some(Node::Symlink { .. }) => return Err(reject("it would replace a symlink unpacked before it")),
            Some(_) => return Err(reject("duplicate entry: the path appears twice in the archive")),
        }
        match fs::symlink_metadata(&full) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Ok(meta) if meta.file_type().is_symlink() => return Err(reject("a symlink exists already at its path")),
            Ok(_) => return Err(reject("duplicate entry: the path exists already")),
            Err(e) => return Err(PackageError::Io { path: full, source: e }),
        }

        let node = match kind {
            Kind::Dir => {
                create_dir(&full)?;
                Node::Dir { explicit: true }
            }
            Kind::File => {
                let mode = mode.map_err(|_| reject("its mode field is not an octal number"))?;
                self.write_file(entry, path, &key, &full, mode & 0o100 != 0)?
            }
            Kind::Symlink => {
                let raw_target = raw_target.unwrap_or_default();
                let target =
                    std::str::from_utf8(&raw_target).map_err(|_| reject("the symlink target is not valid utf-8"))?;
                let target = paths::symlink_target(parents, target).map_err(|r| reject(&r))?;
                std::os::unix::fs::symlink(&target, &full).map_err(PackageError::io(&full))?;
                Node::Symlink { target }
            }
        };
        self.tree.insert(key, node);
        Ok(())
    }

    /// Creates the directories above an entry that the archive did not list,
    /// refusing to go through anything but a real directory.
    fn make_parents(&mut self, path: &str, parents: &[&str]) -> Result<(), PackageError> {
        let mut key = String::new();
        for parent in parents {
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(parent);
            let through_symlink = || {
                PackageError::unsafe_entry(
                    path,
                    format!("its parent `{key}` is a symlink; nothing may be written through one"),
                )
            };
            let through_file = || PackageError::unsafe_entry(path, format!("its parent `{key}` is not a directory"));
            match self.tree.get(&key) {
                Some(Node::Symlink { .. }) => return Err(through_symlink()),
                Some(Node::File { .. }) => return Err(through_file()),
                Some(Node::Dir { .. }) | None => {}
            }
            // The disk is checked too: the tree mirrors only what we wrote.
            let full = self.dest.join(&key);
            match fs::symlink_metadata(&full) {
                Ok(meta) if meta.file_type().is_symlink() => return Err(through_symlink()),
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(through_file()),
                Err(e) if e.kind() == ErrorKind::NotFound => create_dir(&full)?,
                Err(e) => return Err(PackageError::Io { path: full, source: e }),
            }
            self.tree.entry(key.clone()).or_insert(Node::Dir { explicit: false });
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &str,
        key: &str,
        full: &Path,
        exec: bool,
    ) -> Result<Node, PackageError> {
        let size = entry.size();
        let limit = self.limits.max_unpacked_bytes;
        let too_large = || PackageError::UnpackedTooLarge { path: path.to_string(), limit };
        // Refused on the header alone: a gzip bomb is stopped before a byte
        // of it is inflated.
        if self.bytes.saturating_add(size) > limit {
            return Err(too_large());
        }

        let mode = if exec { 0o755 } else { 0o644 };
        // `create_new` (O_EXCL) never follows a symlink at the final path.
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(mode).open(full).map_err(PackageError::io(full))?;
        let is_manifest = key == MANIFEST_FILE;
        let mut manifest = Vec::new();
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(PackageError::corrupt(format!("reading entry `{path}`: {e}"))),
            };
            written += n as u64;
            // Counted as read as well, not only trusted from the header.
            if self.bytes.saturating_add(written) > limit {
                return Err(too_large());
            }
            let chunk = &buf[..n];
            hasher.update(chunk);
            if is_manifest {
                manifest.extend_from_slice(chunk);
            }
            file.write_all(chunk).map_err(PackageError::io(full))?;
        }
        if written != size {
            return Err(PackageError::corrupt(format!("entry `{path}` is truncated: {written} of {size} bytes")));
        }
        // The umask may have taken bits off at creation.
        file.set_permissions(Permissions::from_mode(mode)).map_err(PackageError::io(full))?;

        self.files += 1;
        self.bytes += written;
        if is_manifest {
            self.manifest = Some(manifest);
        }
        Ok(Node::File { exec, size: written, digest: hasher.finalize().into() })
    }

    fn finish(self) -> Result<Unpacked, PackageError> {
        let manifest = match (self.tree.get(MANIFEST_FILE), self.manifest) {
            (Some(Node::File { .. }), Some(manifest)) => manifest,
            _ => return Err(PackageError::MissingManifest),
        };
        let manifest_text = String::from_utf8(manifest)
            .map_err(|e| PackageError::ManifestNotUtf8 { offset: e.utf8_error().valid_up_to() })?;
        Ok(Unpacked { hash: content_hash(&self.tree), manifest_text, files: self.files, bytes: self.bytes })
    }
}

fn create_dir(path: &Path) -> Result<(), PackageError> {
    DirBuilder::new().mode(0o755).create(path).map_err(PackageError::io(path))?;
    // The umask may have taken bits off.
    fs::set_permissions(path, Permissions::from_mode(0o755)).map_err(PackageError::io(path))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use tar::Header;

    use super::*;
    use crate::testutil::{MANIFEST, RawTar, gzip, listing, unpack_in_new_dir};

    /// Unpacks `archive`, expects a refusal whose message has every piece of
    /// `expected`, and checks that nothing appeared next to the destination.
    fn assert_rejected(archive: &[u8], limits: &UnpackLimits, expected: &[&str]) -> PackageError {
        let (outer, result) = unpack_in_new_dir(archive, limits);
        let err = result.expect_err("archive should have been rejected");
        let message = err.to_string();
        for piece in expected {
            assert!(message.contains(piece), "`{piece}` missing from: {message}");
        }
        assert_eq!(listing(outer.path()), ["dest"], "something was written outside dest ({message})");
        err
    }

    fn defaults() -> UnpackLimits {
        UnpackLimits::default()
    }

    #[test]
    fn default_limits_are_lambdas() {
        let limits = UnpackLimits::default();
        assert_eq!(limits.max_archive_bytes, 50 * 1024 * 1024);
        assert_eq!(limits.max_unpacked_bytes, 250 * 1024 * 1024);
        assert_eq!(limits.max_entries, 20_000);
    }

    #[test]
    fn plain_archive_unpacks() {
        let archive = RawTar::new().manifest().dir("src").file("src/a.py", b"a").file("./b.py", b"bb").gz();
        let (outer, result) = unpack_in_new_dir(&archive, &defaults());
        let unpacked = result.unwrap();
        assert_eq!(unpacked.manifest_text, MANIFEST);
        assert_eq!(unpacked.files, 3);
        assert_eq!(unpacked.bytes, MANIFEST.len() as u64 + 3);
        assert_eq!(listing(&outer.path().join("dest")), ["b.py", "flick.toml", "src"]);
    }

    #[test]
    fn absolute_paths_are_rejected() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("escaped");
        let name = target.to_str().unwrap();
        let err = assert_rejected(&RawTar::new().manifest().file(name, b"x").gz(), &defaults(), &[name, "absolute"]);
        assert!(matches!(err, PackageError::UnsafeEntry { .. }));
        assert!(!target.exists());
    }

    #[test]
    fn parent_components_are_rejected() {
        for name in ["../escaped", "a/../../escaped", "./../escaped", "a/..", ".."] {
            let archive = RawTar::new().manifest().file("a/ok", b"").file(name, b"x").gz();
            assert_rejected(&archive, &defaults(), &[&format!("`{name}`"), "`..`"]);
        }
    }

    #[test]
    fn parent_components_in_long_names_and_pax_paths_are_rejected() {
        let long = format!("{}/../../../escaped", "a/".repeat(60));
        let archive = RawTar::new().manifest().long_name(&long).file("innocent", b"x").gz();
        assert_rejected(&archive, &defaults(), &[&long, "`..`"]);

        let archive = RawTar::new().manifest().pax(&[("path", "../escaped")]).file("innocent", b"x").gz();
        assert_rejected(&archive, &defaults(), &["`../escaped`", "`..`"]);

        let archive = RawTar::new().manifest().pax(&[("linkpath", "/etc/passwd")]).symlink("l", "ok").gz();
        assert_rejected(&archive, &defaults(), &["`l`", "/etc/passwd"]);
    }

    #[test]
    fn empty_paths_are_rejected() {
        assert_rejected(&RawTar::new().manifest().file("", b"x").gz(), &defaults(), &["``", "empty"]);
        assert_rejected(&RawTar::new().manifest().file("./", b"x").gz(), &defaults(), &["`./`", "root"]);
        // A `./` directory entry is how `tar -C dir .` names the root: fine.
        let (_, result) = unpack_in_new_dir(&RawTar::new().dir("./").manifest().gz(), &defaults());
        result.unwrap();
    }

    #[test]
    fn hard_links_are_rejected() {
        let archive = RawTar::new().manifest().entry(b"hl", EntryType::Link, b"flick.toml", b"", 0o644).gz();
        assert_rejected(&archive, &defaults(), &["`hl`", "hard links"]);
        let archive = RawTar::new().manifest().entry(b"passwd", EntryType::Link, b"/etc/passwd", b"", 0o644).gz();
        assert_rejected(&archive, &defaults(), &["`passwd`", "hard links"]);
    }

    #[test]
    fn special_files_are_rejected() {
        for (kind, reason) in [
            (EntryType::Char, "device"),
            (EntryType::Block, "device"),
            (EntryType::Fifo, "fifo"),
            (EntryType::GNUSparse, "sparse"),
            (EntryType::new(b'Z'), "`Z`"),
        ] {
            let archive = RawTar::new().manifest().entry(b"special", kind, b"", b"", 0o644).gz();
            assert_rejected(&archive, &defaults(), &["`special`", reason]);
        }
        let archive = RawTar::new().manifest().pax(&[("GNU.sparse.major", "1")]).file("s", b"").gz();
        assert_rejected(&archive, &defaults(), &["sparse"]);
    }

    #[test]
    fn escaping_symlinks_are_rejected() {
        for (name, target) in
            [("passwd", "/etc/passwd"), ("up", "../x"), ("sub/up", "../../x"), ("tricky", "a/../../x"), ("empty", "")]
        {
            let archive = RawTar::new().manifest().symlink(name, target).gz();
            assert_rejected(&archive, &defaults(), &[&format!("`{name}`")]);
        }
        // Lexically inside, but `d` is itself a link to the root, so the
        // kernel would resolve `d/..` to the root's parent.
        let archive = RawTar::new().manifest().symlink("sub/d", "..").symlink("sub/e", "d/..").gz();
        assert_rejected(&archive, &defaults(), &["`sub/e`", "after a name"]);
    }

    #[test]
    fn inside_symlinks_are_fine() {
        let archive = RawTar::new()
            .manifest()
            .file("lib/a.py", b"a")
            .symlink("a.py", "lib/a.py")
            .symlink("lib/root", "..")
            .symlink("lib/self", ".")
            .symlink("dangling", "not/there")
            .gz();
        let (outer, result) = unpack_in_new_dir(&archive, &defaults());
        result.unwrap();
        let dest = outer.path().join("dest");
        assert_eq!(fs::read(dest.join("a.py")).unwrap(), b"a");
        assert_eq!(fs::read_link(dest.join("lib/root")).unwrap(), Path::new(".."));
    }

    #[test]
    fn writing_through_a_symlink_is_rejected() {
        // The link stays inside the package; writing through it still is
        // refused, so no later rule can be sidestepped by a link.
        let archive = RawTar::new().manifest().dir("sub").symlink("link", "sub").file("link/file", b"x").gz();
        let (outer, result) = unpack_in_new_dir(&archive, &defaults());
        let message = result.unwrap_err().to_string();
        assert!(message.contains("`link/file`") && message.contains("`link` is a symlink"), "{message}");
        assert!(!outer.path().join("dest/sub/file").exists());

        // The classic: a link out of the package, then a file through it.
        let archive = RawTar::new().manifest().symlink("out", "../..").file("out/escaped", b"x").gz();
        assert_rejected(&archive, &defaults(), &["`out`"]);

        // A directory entry through a symlink, and a deeper implied parent.
        let archive = RawTar::new().manifest().dir("sub").symlink("link", "sub").dir("link/d").gz();
        assert_rejected(&archive, &defaults(), &["`link/d`", "symlink"]);
        let archive = RawTar::new().manifest().dir("sub").symlink("link", "sub").file("link/a/b", b"").gz();
        assert_rejected(&archive, &defaults(), &["`link/a/b`", "symlink"]);
    }

    #[test]
    fn replacing_a_symlink_is_rejected() {
        let archive = RawTar::new().manifest().dir("sub").symlink("link", "sub").file("link", b"x").gz();
        assert_rejected(&archive, &defaults(), &["`link`", "symlink"]);
        let archive = RawTar::new().manifest().symlink("link", "flick.toml").dir("link").gz();
        assert_rejected(&archive, &defaults(), &["`link`", "symlink"]);
    }

    #[test]
    fn writing_below_a_file_is_rejected() {
        let archive = RawTar::new().manifest().file("flick.toml/x", b"x").gz();
        assert_rejected(&archive, &defaults(), &["`flick.toml/x`", "not a directory"]);
    }

    #[test]
    fn duplicates_are_rejected() {
        let archive = RawTar::new().manifest().file("a.py", b"1").file("a.py", b"2").gz();
        assert_rejected(&archive, &defaults(), &["`a.py`", "duplicate"]);
        let archive = RawTar::new().manifest().file("a.py", b"1").file("./a.py", b"2").gz();
        assert_rejected(&archive, &defaults(), &["`./a.py`", "duplicate"]);
        let archive = RawTar::new().manifest().dir("d").dir("d/").gz();
        assert_rejected(&archive, &defaults(), &["`d/`", "duplicate"]);
        let archive = RawTar::new().manifest().file("d/x", b"").file("d", b"").gz();
        assert_rejected(&archive, &defaults(), &["`d`", "duplicate"]);
        // A directory listed after its contents is not a duplicate.
        let archive = RawTar::new().manifest().file("d/x", b"").dir("d").gz();
        unpack_in_new_dir(&archive, &defaults()).1.unwrap();
    }

    #[test]
    fn archive_size_limit() {
        let archive = RawTar::new().manifest().gz();
        let limits = UnpackLimits { max_archive_bytes: archive.len() as u64 - 1, ..defaults() };
        let err = assert_rejected(&archive, &limits, &["over the limit"]);
        assert!(matches!(err, PackageError::ArchiveTooLarge { .. }));
    }

    #[test]
    fn entry_count_limit() {
        let mut tar = RawTar::new().manifest();
        for i in 0..10 {
            tar = tar.file(&format!("f{i}"), b"");
        }
        let archive = tar.gz();
        let limits = UnpackLimits { max_entries: 10, ..defaults() };
        let err = assert_rejected(&archive, &limits, &["more than 10 entries"]);
        assert!(matches!(err, PackageError::TooManyEntries { limit: 10 }));
        unpack_in_new_dir(&archive, &UnpackLimits { max_entries: 11, ..defaults() }).1.unwrap();
    }

    #[test]
    fn unpacked_size_limit_counts_all_files() {
        let chunk = vec![7u8; 300 * 1024];
        let mut tar = RawTar::new().manifest();
        for i in 0..5 {
            tar = tar.file(&format!("part{i}"), &chunk);
        }
        let limits = UnpackLimits { max_unpacked_bytes: 1 << 20, ..defaults() };
        let err = assert_rejected(&tar.gz(), &limits, &["more than 1MiB", "`part3`"]);
        assert!(matches!(err, PackageError::UnpackedTooLarge { .. }));
    }

    #[test]
    fn gzip_bomb_is_stopped_quickly() {
        // 64 MiB of zeros compresses to about 64 KiB.
        let size = 64u64 << 20;
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(MANIFEST.len() as u64);
        builder.append_data(&mut header, "flick.toml", MANIFEST.as_bytes()).unwrap();
        header.set_size(size);
        builder.append_data(&mut header, "zeros", std::io::repeat(0).take(size)).unwrap();
        let archive = builder.into_inner().unwrap().finish().unwrap();
        assert!(archive.len() < 1 << 20, "bomb is {} bytes", archive.len());

        let limits = UnpackLimits { max_unpacked_bytes: 1 << 20, ..defaults() };
        let started = Instant::now();
        let (outer, result) = unpack_in_new_dir(&archive, &limits);
        let err = result.unwrap_err();
        assert!(matches!(err, PackageError::UnpackedTooLarge { ref path, .. } if path == "zeros"), "{err}");
        assert!(started.elapsed().as_secs() < 5, "took {:?}", started.elapsed());
        // Refused on the header: not a byte of it was written.
        assert!(!outer.path().join("dest/zeros").exists());
    }

    #[test]
    fn oversized_extension_headers_are_rejected() {
        let huge = "x".repeat(MAX_EXTENSION_BYTES as usize + 1);
        let archive = RawTar::new().manifest().long_name(&huge).file("f", b"").gz();
        assert_rejected(&archive, &defaults(), &["extension header"]);
        let archive = RawTar::new().manifest().pax(&[("comment", &huge)]).file("f", b"").gz();
        assert_rejected(&archive, &defaults(), &["extension header"]);
    }

    #[test]
    fn data_on_directories_and_symlinks_is_rejected() {
        let archive = RawTar::new().manifest().entry(b"d", EntryType::Directory, b"", &[0; 600], 0o755).gz();
        assert_rejected(&archive, &defaults(), &["`d`", "600 bytes"]);
    }

    #[test]
    fn pax_size_must_agree_with_the_header() {
        let archive = RawTar::new().manifest().pax(&[("size", "5")]).file("f", b"abc").gz();
        assert_rejected(&archive, &defaults(), &["`f`", "pax size"]);
    }

    #[test]
    fn manifest_must_be_at_the_root() {
        let archive = RawTar::new().file("main.py", b"").gz();
        let err = assert_rejected(&archive, &defaults(), &["archive has no flick.toml at its root"]);
        assert!(matches!(err, PackageError::MissingManifest));
        let archive = RawTar::new().file("sub/flick.toml", MANIFEST.as_bytes()).gz();
        assert_rejected(&archive, &defaults(), &["no flick.toml"]);
        let archive = RawTar::new().dir("flick.toml").gz();
        assert_rejected(&archive, &defaults(), &["no flick.toml"]);
        let archive = RawTar::new().file("real.toml", MANIFEST.as_bytes()).symlink("flick.toml", "real.toml").gz();
        assert_rejected(&archive, &defaults(), &["no flick.toml"]);
        assert_rejected(&RawTar::new().gz(), &defaults(), &["no flick.toml"]);
    }

    #[test]
    fn manifest_must_be_utf8() {
        let archive = RawTar::new().file("flick.toml", b"name = \"\xff\"").gz();
        assert_rejected(&archive, &defaults(), &["utf-8", "offset 8"]);
    }

    #[test]
    fn non_gzip_input_is_corrupt() {
        let err = assert_rejected(&RawTar::new().manifest().tar(), &defaults(), &["not a valid tar.gz"]);
        assert!(matches!(err, PackageError::Corrupt { .. }));
        let mut truncated = RawTar::new().manifest().file("big", &[1; 5000]).gz();
        truncated.truncate(truncated.len() / 2);
        assert_rejected(&truncated, &defaults(), &["not a valid tar.gz"]);
    }

    #[test]
    fn destination_must_be_an_empty_directory() {
        let archive = RawTar::new().manifest().gz();
        let dest = tempfile::tempdir().unwrap();
        fs::write(dest.path().join("leftover"), "").unwrap();
        let err = unpack(&archive, dest.path(), &defaults()).unwrap_err();
        assert!(matches!(err, PackageError::DestNotEmpty { .. }), "{err}");

        let missing = dest.path().join("missing");
        let message = unpack(&archive, &missing, &defaults()).unwrap_err().to_string();
        assert!(message.contains(&missing.display().to_string()), "{message}");
    }

    #[test]
    fn modes_are_normalised() {
        let archive = RawTar::new()
            .manifest()
            .entry(b"owner-exec", EntryType::Regular, b"", b"", 0o4700)
            .entry(b"group-exec", EntryType::Regular, b"", b"", 0o670)
            .entry(b"d", EntryType::Directory, b"", b"", 0o700)
            .gz();
        let (outer, result) = unpack_in_new_dir(&archive, &defaults());
        result.unwrap();
        let mode =
            |name: &str| fs::metadata(outer.path().join("dest").join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("owner-exec"), 0o755);
        assert_eq!(mode("group-exec"), 0o644);
        assert_eq!(mode("d"), 0o755);
    }

    #[test]
    fn compression_and_gzip_members_do_not_change_the_hash() {
        let tar = RawTar::new().manifest().file("a", b"hello").tar();
        let hash = |archive: &[u8]| unpack_in_new_dir(archive, &defaults()).1.unwrap().hash;
        let fast = hash(&gzip(&tar, Compression::fast()));
        assert_eq!(fast, hash(&gzip(&tar, Compression::best())));
        // Two gzip members, as concatenating tools write.
        let (first, second) = tar.split_at(700);
        let mut members = gzip(first, Compression::default());
        members.extend(gzip(second, Compression::default()));
        assert_eq!(fast, hash(&members));
    }
}
