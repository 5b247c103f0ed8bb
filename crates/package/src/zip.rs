//! Reading an untrusted zip (a Lambda `Code.ZipFile`, an OpenWhisk binary
//! action) into files held in memory, with the same rules `unpack` applies
//! to tar.gz packages plus the zip format's own tricks.
//!
//! Nothing from a zip's headers is trusted for safety: sizes are counted
//! while inflating, names are checked as written (`\` counts as a
//! separator, as unzip treats it), and entries whose data overlap (the
//! "better zip bomb") are refused before anything is inflated.

use std::io::{Cursor, ErrorKind, Read};

use crate::error::PackageError;
use crate::pack::{PackedFile, file_tree};
use crate::paths;
use crate::unpack::UnpackLimits;

/// An entry may inflate to at most this many times its compressed size, and
/// all entries together to this many times the zip's size. Source code
/// compresses 3-10x; deflate's ceiling is about 1000x, which only runs of
/// one byte reach.
pub const MAX_RATIO: u64 = 200;
/// Below this many inflated bytes the ratio is not checked: a small file of
/// zeros is no threat and compresses to almost nothing.
const RATIO_FLOOR: u64 = 1 << 20;
/// A symlink's target is a path; longer is not a path.
const MAX_LINK_TARGET: u64 = 4096;

// File type bits of a unix mode (st_mode), as zip tools store it in the
// upper half of the external attributes.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// Reads the regular files and symlinks of zip `bytes` into memory.
///
/// Refused, each with an error naming the entry: more than
/// `limits.max_entries` entries or a zip over `limits.max_archive_bytes`;
/// absolute paths, `..` components, empty names, a path twice or below a
/// file or symlink; symlinks that resolve outside the package (or with `..`
/// after a name); devices, fifos, sockets; encrypted entries and
/// compression methods other than stored and deflate; files adding up to
/// more than `limits.max_unpacked_bytes` (counted while inflating: a lying
/// header changes nothing); an entry or the whole zip inflating over
/// [`MAX_RATIO`] times its size; overlapping entries.
///
/// Directories are implied by the files' paths (an empty directory is not
/// kept). The owner exec bit comes from the entry's unix mode, so a
/// `bootstrap` zipped on unix stays executable; entries without a unix mode
/// (zipped on Windows) are not executable. Files are returned in zip order.
pub fn read(bytes: &[u8], limits: &UnpackLimits) -> Result<Vec<PackedFile>, PackageError> {
    let size = bytes.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(PackageError::ArchiveTooLarge { size, limit: limits.max_archive_bytes });
    }
    let corrupt = |e: zip::result::ZipError| PackageError::CorruptZip { reason: e.to_string() };
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
    if archive.len() as u64 > limits.max_entries {
        return Err(PackageError::TooManyEntries { limit: limits.max_entries });
    }
    if archive.has_duplicate_names() {
        return Err(PackageError::CorruptZip { reason: "the same name appears twice".into() });
    }
    if archive.has_overlapping_files().map_err(corrupt)? {
        return Err(PackageError::CorruptZip {
            reason: "entries share their compressed data (an overlapping-entries zip bomb)".into(),
        });
    }

    let mut files = Vec::new();
    let mut total = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| match e {
            zip::result::ZipError::UnsupportedArchive(reason) => PackageError::CorruptZip {
                reason: format!("entry {index}: {reason} (only stored and deflated, unencrypted entries are read)"),
            },
            other => corrupt(other),
        })?;
        // Names: utf-8 when flagged, else CP437, decoded by the crate; `\`
        // is a separator on Windows and for unzip, so `..\x` climbs too.
        let name = entry.name().map_err(corrupt)?.replace('\\', "/");
        let reject = |reason: &str| PackageError::unsafe_entry(&name, reason);
        if name.contains('\0') {
            return Err(reject("the path contains a NUL byte"));
        }
        let components = paths::entry_components(&name).map_err(reject)?;
        if entry.encrypted() {
            return Err(reject("the entry is encrypted"));
        }
        let file_type = entry.unix_mode().map(|mode| mode & S_IFMT).filter(|t| *t != 0);
        let is_dir = entry.is_dir() || file_type == Some(S_IFDIR);
        let is_symlink = file_type == Some(S_IFLNK);
        if !is_dir && !is_symlink && file_type.is_some_and(|t| t != S_IFREG) {
            return Err(reject("only regular files, directories and symlinks are allowed (a device, fifo or socket)"));
        }
        if is_dir {
            // Checked above for its path; implied again by its files.
            continue;
        }
        if components.is_empty() {
            return Err(reject("the path names the package root"));
        }

        let compressed = entry.compressed_size();
        let cap =
            if is_symlink { MAX_LINK_TARGET } else { limits.max_unpacked_bytes - total.min(limits.max_unpacked_bytes) };
        let contents = inflate(&mut entry, &name, cap, compressed).map_err(|e| match e {
            Inflate::OverCap if is_symlink => reject("the symlink target is too long"),
            Inflate::OverCap => PackageError::UnpackedTooLarge { path: name.clone(), limit: limits.max_unpacked_bytes },
            Inflate::Error(e) => e,
        })?;
        if is_symlink {
            files.push(PackedFile { path: name, contents, exec: false, symlink: true });
            continue;
        }
        total += contents.len() as u64;
        if total > RATIO_FLOOR && total / size.max(1) > MAX_RATIO {
            return Err(PackageError::CompressionRatio { path: name, ratio: MAX_RATIO });
        }
        let exec = entry.unix_mode().is_some_and(|mode| mode & 0o100 != 0);
        files.push(PackedFile { path: name, contents, exec, symlink: false });
    }
    // Whole-tree rules (duplicates after normalising, a file below a file
    // or symlink, symlink targets) are the ones `pack_files` applies.
    file_tree(&files)?;
    Ok(files)
}

enum Inflate {
    OverCap,
    Error(PackageError),
}

/// Inflates one entry, stopping as soon as it passes `cap` bytes or
/// [`MAX_RATIO`] times its compressed size (past [`RATIO_FLOOR`]).
fn inflate(entry: &mut impl Read, name: &str, cap: u64, compressed: u64) -> Result<Vec<u8>, Inflate> {
    let ratio_cap = compressed.saturating_mul(MAX_RATIO).max(RATIO_FLOOR);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Inflate::Error(PackageError::CorruptZip { reason: format!("entry `{name}`: {e}") }));
            }
        };
        out.extend_from_slice(&buf[..n]);
        let len = out.len() as u64;
        if len > cap {
            return Err(Inflate::OverCap);
        }
        if len > ratio_cap {
            return Err(Inflate::Error(PackageError::CompressionRatio { path: name.to_string(), ratio: MAX_RATIO }));
        }
    }
}

/// Files held in memory as a zip (deflated; exec bits as mode 0o755,
/// symlinks as zip symlinks), in the given order: a function's code handed
/// back the way the Lambda API takes it (GetFunction's `Code.Location`).
pub fn write(files: &[PackedFile]) -> Result<Vec<u8>, PackageError> {
    use std::io::Write as _;
    use zip::write::SimpleFileOptions;
    let failed = |e: &dyn std::fmt::Display| PackageError::CorruptZip { reason: format!("writing the zip: {e}") };
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for f in files {
        let mode = if f.exec { 0o755 } else { 0o644 };
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(mode);
        if f.symlink {
            let target = String::from_utf8_lossy(&f.contents);
            writer.add_symlink(f.path.as_str(), target.as_ref(), options).map_err(|e| failed(&e))?;
        } else {
            writer.start_file(f.path.as_str(), options).map_err(|e| failed(&e))?;
            writer.write_all(&f.contents).map_err(|e| failed(&e))?;
        }
    }
    Ok(writer.finish().map_err(|e| failed(&e))?.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    use super::*;
    use crate::{pack_files, unpack};

    const HANDLER: &[u8] = b"def handler(event, context):\n    return event\n";

    fn deflated() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).unix_permissions(0o644)
    }

    fn zip_with(build: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut writer);
        writer.finish().unwrap().into_inner()
    }

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        zip_with(|w| {
            for (name, data) in files {
                w.start_file(*name, deflated()).unwrap();
                w.write_all(data).unwrap();
            }
        })
    }

    fn rejected(bytes: &[u8], limits: &UnpackLimits, expected: &[&str]) -> PackageError {
        let err = read(bytes, limits).expect_err("the zip should be refused");
        let text = err.to_string();
        for part in expected {
            assert!(text.contains(part), "error `{text}` should contain `{part}`");
        }
        err
    }

    #[test]
    fn written_zips_read_back_the_same() {
        let files = vec![
            PackedFile::file("main.py", b"print(1)\n".to_vec()),
            PackedFile { path: "bin/run".into(), contents: b"#!/bin/sh\n".to_vec(), exec: true, symlink: false },
            PackedFile { path: "link".into(), contents: b"main.py".to_vec(), exec: false, symlink: true },
        ];
        let mut back = read(&write(&files).unwrap(), &UnpackLimits::default()).unwrap();
        back.sort_by(|a, b| a.path.cmp(&b.path));
        let mut want = files.clone();
        want.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(back, want);
    }

    #[test]
    fn reads_files_with_their_exec_bits_and_symlinks() {
        let bytes = zip_with(|w| {
            w.add_directory("lib/", deflated()).unwrap();
            w.start_file("lib/util.py", deflated()).unwrap();
            w.write_all(b"X = 1\n").unwrap();
            w.start_file("bootstrap", deflated().unix_permissions(0o755)).unwrap();
            w.write_all(b"#!/bin/sh\n").unwrap();
            w.start_file("lambda_function.py", SimpleFileOptions::default()).unwrap();
            w.write_all(HANDLER).unwrap();
            w.add_symlink("util.py", "lib/util.py", deflated()).unwrap();
        });
        let files = read(&bytes, &UnpackLimits::default()).unwrap();
        assert_eq!(
            files,
            [
                PackedFile::file("lib/util.py", "X = 1\n"),
                PackedFile::executable("bootstrap", "#!/bin/sh\n"),
                PackedFile::file("lambda_function.py", HANDLER),
                PackedFile::symlink("util.py", "lib/util.py"),
            ]
        );
    }

    #[test]
    fn read_then_packed_unpacks_to_the_same_tree() {
        let bytes = zip_with(|w| {
            w.start_file("bootstrap", deflated().unix_permissions(0o700)).unwrap();
            w.write_all(b"#!/bin/sh\n").unwrap();
            w.start_file("a/b/c.txt", deflated()).unwrap();
            w.write_all(b"c").unwrap();
        });
        let mut files = read(&bytes, &UnpackLimits::default()).unwrap();
        files.push(PackedFile::file("flick.toml", "name = \"z\"\nruntime = \"exec\"\nhandler = \"./bootstrap\"\n"));
        let archive = pack_files(&files).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let unpacked = unpack(&archive, dest.path(), &UnpackLimits::default()).unwrap();
        assert_eq!(unpacked.files, 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.path().join("bootstrap")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read(dest.path().join("a/b/c.txt")).unwrap(), b"c");
    }

    #[test]
    fn parent_components_and_absolute_paths_are_refused() {
        let limits = UnpackLimits::default();
        rejected(&zip_of(&[("../evil.py", b"x")]), &limits, &["../evil.py", "`..`"]);
        rejected(&zip_of(&[("a/../../evil.py", b"x")]), &limits, &["`..`"]);
        rejected(&zip_of(&[("..\\evil.py", b"x")]), &limits, &["`..`"]);
        rejected(&zip_of(&[("/etc/cron.d/x", b"x")]), &limits, &["absolute"]);
        rejected(&zip_of(&[("\\etc\\x", b"x")]), &limits, &["absolute"]);
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let limits = UnpackLimits::default();
        for target in ["/etc/passwd", "../outside", "a/../../x"] {
            let bytes = zip_with(|w| w.add_symlink("link", target, deflated()).unwrap());
            rejected(&bytes, &limits, &["link"]);
        }
        // Writing through a symlink that points inside is refused too.
        let bytes = zip_with(|w| {
            w.add_directory("d/", deflated()).unwrap();
            w.add_symlink("l", "d", deflated()).unwrap();
            w.start_file("l/x", deflated()).unwrap();
            w.write_all(b"x").unwrap();
        });
        rejected(&bytes, &limits, &["l/x", "symlink"]);
    }

    #[test]
    fn special_files_and_conflicts_are_refused() {
        let limits = UnpackLimits::default();
        let fifo = zip_with(|w| {
            w.start_file("pipe", deflated().external_attributes((0o010_644) << 16)).unwrap();
        });
        rejected(&fifo, &limits, &["pipe", "fifo"]);
        rejected(&zip_of(&[("a", b"1"), ("a/b", b"2")]), &limits, &["a/b", "parent `a` is a file"]);
        rejected(&zip_of(&[("a/b", b"1"), ("a", b"2")]), &limits, &["`a`", "directory"]);
        rejected(&zip_of(&[("./a", b"1"), ("a", b"2")]), &limits, &["duplicate"]);
    }

    #[test]
    fn entry_and_size_limits_are_counted_while_inflating() {
        let many: Vec<(String, Vec<u8>)> = (0..11).map(|i| (format!("f{i}"), vec![b'x'; 10])).collect();
        let many: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let limits = UnpackLimits { max_entries: 10, ..UnpackLimits::default() };
        assert!(matches!(rejected(&zip_of(&many), &limits, &["10 entries"]), PackageError::TooManyEntries { .. }));

        let limits = UnpackLimits { max_unpacked_bytes: 100, ..UnpackLimits::default() };
        let err = rejected(&zip_of(&many), &limits, &["more than 100B", "f10"]);
        assert!(matches!(err, PackageError::UnpackedTooLarge { .. }), "{err:?}");

        let limits = UnpackLimits { max_archive_bytes: 50, ..UnpackLimits::default() };
        rejected(&zip_of(&[("a", b"1")]), &limits, &["over the limit"]);
    }

    #[test]
    fn a_zip_bomb_is_stopped_by_its_ratio() {
        let zeros = vec![0u8; 8 << 20];
        let bytes = zip_of(&[("lambda_function.py", HANDLER), ("zeros.bin", &zeros)]);
        assert!((bytes.len() as u64) < (8 << 20) / MAX_RATIO, "the test zip compresses well");
        let err = rejected(&bytes, &UnpackLimits::default(), &["zeros.bin", "zip bomb"]);
        assert!(matches!(err, PackageError::CompressionRatio { .. }));
        // A small file of zeros is fine.
        read(&zip_of(&[("zeros.bin", &zeros[..1 << 19])]), &UnpackLimits::default()).unwrap();
    }

    /// A header that declares a tiny size changes nothing: bytes are counted.
    #[test]
    fn lying_sizes_are_not_trusted() {
        let data = vec![b'a'; 300];
        let mut bytes = zip_of(&[("f", &data)]);
        // Patch the uncompressed size (local header offset 22, central
        // directory entry offset 24) to 10.
        let local = find(&bytes, b"PK\x03\x04");
        bytes[local + 22..local + 26].copy_from_slice(&10u32.to_le_bytes());
        let central = find(&bytes, b"PK\x01\x02");
        bytes[central + 24..central + 28].copy_from_slice(&10u32.to_le_bytes());
        let limits = UnpackLimits { max_unpacked_bytes: 100, ..UnpackLimits::default() };
        match read(&bytes, &limits) {
            // Either the reader notices the lie, or the count stops it.
            Err(PackageError::UnpackedTooLarge { .. } | PackageError::CorruptZip { .. }) => {}
            other => panic!("a lying header got through: {other:?}"),
        }
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let bytes = zip_with(|w| {
            w.start_file("a", deflated()).unwrap();
            w.write_all(&[b'x'; 1000]).unwrap();
            w.shallow_copy_file("a", "b").unwrap();
        });
        rejected(&bytes, &UnpackLimits::default(), &["overlapping"]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        rejected(b"not a zip at all", &UnpackLimits::default(), &["not a valid zip file"]);
        rejected(b"", &UnpackLimits::default(), &["not a valid zip file"]);
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack.windows(needle.len()).position(|w| w == needle).unwrap()
    }
}
