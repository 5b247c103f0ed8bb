//! Property/fuzz tests of the package unpacker, from the attacker's side:
//! random bytes, gzip'd random bytes, hand-built hostile tar streams (bad
//! paths, escaping symlinks, hard links, devices, pax and GNU long-name
//! headers, lying sizes, non-octal fields) and byte-flipped real packages.
//!
//! Whatever goes in: no panic; nothing appears outside the destination; no
//! symlink in it resolves outside it; the files in it never add up to more
//! than the unpacked-size limit; nothing but plain files, directories and
//! symlinks is created. What is accepted repacks (`pack_dir`) to the same
//! content hash.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property. See RELIABILITY.md.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use flick_package::{PackageError, UnpackLimits, Unpacked, pack_dir, unpack};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence};

/// `default` cases per property unless `FLICK_FUZZ_CASES` says otherwise;
/// failures are kept in `fuzz_unpack.proptest-regressions` next to this file.
fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

const MANIFEST: &[u8] = b"name = \"demo\"\nruntime = \"exec\"\nhandler = \"cat\"\n";

/// One tar header and its data, written raw: the fields hold whatever the
/// test says, which `tar::Header`'s setters would refuse.
#[derive(Clone, Debug)]
struct RawEntry {
    name: Vec<u8>,
    kind: u8,
    link: Vec<u8>,
    data: Vec<u8>,
    /// The size field, when it lies about `data`.
    declared: Option<u64>,
    /// The mode field; `None` writes garbage (not octal).
    mode: Option<u32>,
}

impl RawEntry {
    fn file(name: &str, data: &[u8]) -> Self {
        Self { name: name.into(), kind: b'0', link: vec![], data: data.to_vec(), declared: None, mode: Some(0o644) }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            let n = self.name.len().min(100);
            old.name[..n].copy_from_slice(&self.name[..n]);
            let n = self.link.len().min(100);
            old.linkname[..n].copy_from_slice(&self.link[..n]);
            match self.mode {
                Some(mode) => old.mode.copy_from_slice(format!("{:07o}\0", mode & 0o7777777).as_bytes()),
                None => old.mode.copy_from_slice(b"9z9z9z9\0"),
            }
        }
        header.as_old_mut().linkflag[0] = self.kind;
        header.set_size(self.declared.unwrap_or(self.data.len() as u64));
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
}

fn tar_of(entries: &[RawEntry], end_blocks: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        e.write(&mut out);
    }
    if end_blocks {
        out.extend_from_slice(&[0; 1024]);
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// `"<len> key=value\n"`, where len counts its own digits.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// Path components an attacker would try, and some ordinary ones.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec!["a", "b", "sub", "flick.toml", "l", "outside", "é"]).prop_map(str::to_string),
        3 => select(vec!["..", ".", ""]).prop_map(str::to_string),
        1 => "[a-z]{90,130}",
    ]
}

fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        10 => (select(vec!["", "", "", "./", "/", "../", "../../"]), proptest::collection::vec(component(), 1..5))
            .prop_map(|(prefix, parts)| format!("{prefix}{}", parts.join("/")).into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn entry() -> impl Strategy<Value = RawEntry> {
    // Type flags: regular (0 and NUL), hard link, symlink, char, block, dir,
    // fifo, contiguous, GNU long link/name, sparse, pax local/global, junk.
    let kind = prop_oneof![
        8 => select(vec![b'0', b'5', b'2']),
        2 => select(vec![b'\0', b'1', b'3', b'4', b'6', b'7', b'K', b'L', b'S', b'x', b'g']),
        1 => any::<u8>(),
    ];
    let data = prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..700),
        2 => path_bytes().prop_map(|mut p| { p.push(0); p }),
        2 => proptest::collection::vec(
            (select(vec!["path", "linkpath", "size", "mtime", "GNU.sparse.size", "comment"]),
             prop_oneof![path_bytes(), "[0-9]{1,22}".prop_map(String::into_bytes), proptest::collection::vec(any::<u8>(), 0..8)]),
            0..3,
        ).prop_map(|records| records.iter().flat_map(|(k, v)| pax_record(k, v)).collect()),
        1 => (0u8..4, 1usize..200).prop_map(|(b, n)| vec![b; n]),
    ];
    let declared = prop_oneof![
        8 => Just(None),
        1 => (0u64..4096).prop_map(Some),
        1 => select(vec![u64::MAX >> 1, 1 << 33, 77_777_777_777]).prop_map(Some),
    ];
    let mode = prop_oneof![8 => (0u32..0o10000).prop_map(Some), 1 => Just(None)];
    (path_bytes(), kind, path_bytes(), data, declared, mode)
        .prop_map(|(name, kind, link, data, declared, mode)| RawEntry { name, kind, link, data, declared, mode })
}

fn limits() -> impl Strategy<Value = UnpackLimits> {
    (prop_oneof![Just(50u64 << 20), 0u64..4096], 0u64..3000, 1u64..30).prop_map(
        |(max_archive_bytes, max_unpacked_bytes, max_entries)| UnpackLimits {
            max_archive_bytes,
            max_unpacked_bytes,
            max_entries,
        },
    )
}

/// Resolves `target` the way the kernel would, from directory `dir` (its
/// components below `dest`), following symlinks met on the way; an error
/// names how it leaves `dest`.
fn resolve(dest: &Path, mut dir: Vec<String>, target: &str, depth: u32) -> Result<Vec<String>, String> {
    if depth > 40 {
        // The kernel gives up with ELOOP: nothing is reached.
        return Ok(dir);
    }
    if target.starts_with('/') {
        return Err(format!("absolute target `{target}`"));
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if dir.pop().is_none() {
                    return Err(format!("`{target}` climbs above the package root"));
                }
            }
            name => {
                let at = dest.join(dir.join("/")).join(name);
                match fs::symlink_metadata(&at) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        let next = fs::read_link(&at).unwrap();
                        dir = resolve(dest, dir, next.to_str().unwrap_or("/not-utf-8"), depth + 1)?;
                    }
                    _ => dir.push(name.to_string()),
                }
            }
        }
    }
    Ok(dir)
}

#[derive(Default, Debug)]
struct Tally {
    files: u64,
    bytes: u64,
}

/// Walks `dir` (below `dest`) without following symlinks and checks every
/// entry in it.
fn walk(dest: &Path, rel: &[String], tally: &mut Tally, accepted: bool) -> Result<(), TestCaseError> {
    let dir = dest.join(rel.join("/"));
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().map_err(|n| TestCaseError::fail(format!("non-utf-8 name {n:?}")))?;
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let kind = meta.file_type();
        let mut child = rel.to_vec();
        child.push(name);
        if kind.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap();
            let target = target.to_str().ok_or_else(|| TestCaseError::fail("non-utf-8 symlink target"))?;
            if let Err(why) = resolve(dest, rel.to_vec(), target, 0) {
                return Err(TestCaseError::fail(format!("symlink `{}` leaves the package: {why}", child.join("/"))));
            }
        } else if kind.is_dir() {
            if accepted {
                prop_assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{}", child.join("/"));
            }
            walk(dest, &child, tally, accepted)?;
        } else if kind.is_file() {
            prop_assert_eq!(meta.nlink(), 1, "a hard link: {}", child.join("/"));
            tally.files += 1;
            tally.bytes += meta.len();
            if accepted {
                let mode = meta.permissions().mode() & 0o7777;
                prop_assert!(mode == 0o644 || mode == 0o755, "mode {:o} on {}", mode, child.join("/"));
            }
        } else {
            return Err(TestCaseError::fail(format!("special file `{}` ({kind:?})", child.join("/"))));
        }
    }
    Ok(())
}

/// With `FLICK_FUZZ_STATS=1`, prints how many archives were accepted and
/// why the others were refused (to see that the generators get past the
/// first checks; RELIABILITY.md quotes these numbers).
mod stats {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use flick_package::{PackageError, Unpacked};

    static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

    pub fn record(result: &Result<Unpacked, PackageError>) {
        if std::env::var_os("FLICK_FUZZ_STATS").is_none() {
            return;
        }
        let what = match result {
            Ok(_) => "accepted".to_string(),
            Err(PackageError::UnsafeEntry { reason, .. }) => {
                format!("unsafe entry: {}", reason.split(['`', '(']).next().unwrap_or(""))
            }
            Err(e) => format!("{:?}", e).split([' ', '{', '(']).next().unwrap_or("").to_string(),
        };
        let mut counts = COUNTS.lock().unwrap();
        *counts.entry(what).or_default() += 1;
        let total: u64 = counts.values().sum();
        if total.is_power_of_two() || total.is_multiple_of(10_000) {
            eprintln!("after {total} archives: {counts:#?}");
        }
    }
}

/// Unpacks `archive` into `<tmp>/dest`, next to an empty `<tmp>/outside`,
/// and checks every invariant; returns the result and the directory.
fn unpack_checked(
    archive: &[u8],
    limits: &UnpackLimits,
) -> Result<(tempfile::TempDir, Result<Unpacked, PackageError>), TestCaseError> {
    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("dest");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(outer.path().join("outside")).unwrap();
    let result = unpack(archive, &dest, limits);
    stats::record(&result);

    let mut around: Vec<String> =
        fs::read_dir(outer.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    around.sort();
    prop_assert_eq!(around, vec!["dest".to_string(), "outside".to_string()], "written next to dest: {:?}", result);
    prop_assert_eq!(fs::read_dir(outer.path().join("outside")).unwrap().count(), 0, "written outside: {:?}", result);

    let mut tally = Tally::default();
    walk(&dest, &[], &mut tally, result.is_ok())?;
    // Checked before each write, so even a refused archive never left more.
    prop_assert!(tally.bytes <= limits.max_unpacked_bytes, "{:?} over {:?}: {:?}", tally, limits, result);
    match &result {
        Ok(unpacked) => {
            prop_assert!((archive.len() as u64) <= limits.max_archive_bytes);
            prop_assert_eq!((unpacked.files, unpacked.bytes), (tally.files, tally.bytes));
            prop_assert!(unpacked.files <= limits.max_entries);
            let manifest = fs::symlink_metadata(dest.join("flick.toml")).unwrap();
            prop_assert!(manifest.is_file());
            prop_assert_eq!(fs::read_to_string(dest.join("flick.toml")).unwrap(), unpacked.manifest_text.clone());
        }
        Err(e) => {
            // Every refusal renders as a message a user can act on.
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok((outer, result))
}

/// What was accepted packs back (as `flick deploy` would) into an archive
/// with the same content hash.
fn check_repack(dest: &Path, unpacked: &Unpacked) -> Result<(), TestCaseError> {
    let archive =
        pack_dir(dest).map_err(|e| TestCaseError::fail(format!("pack_dir refused what unpack accepted: {e}")))?;
    let (_outer, again) = unpack_checked(&archive, &UnpackLimits::default())?;
    let again = again.map_err(|e| TestCaseError::fail(format!("repacked archive refused: {e}")))?;
    prop_assert_eq!(&again.hash, &unpacked.hash);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_unpack_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>(), limits in limits()) {
        let archive = if gz { gzip(&bytes) } else { bytes };
        let (_outer, _result) = unpack_checked(&archive, &limits)?;
    }

    #[test]
    fn fuzz_unpack_hostile_entries(
        with_manifest in proptest::bool::weighted(0.8),
        entries in proptest::collection::vec(entry(), 0..8),
        end_blocks in proptest::bool::weighted(0.9),
        limits in prop_oneof![3 => Just(UnpackLimits::default()), 1 => limits()],
    ) {
        let mut all = Vec::new();
        if with_manifest {
            all.push(RawEntry::file("flick.toml", MANIFEST));
        }
        all.extend(entries);
        let archive = gzip(&tar_of(&all, end_blocks));
        let (outer, result) = unpack_checked(&archive, &limits)?;
        if let Ok(unpacked) = result {
            check_repack(&outer.path().join("dest"), &unpacked)?;
        }
    }

    #[test]
    fn fuzz_unpack_mutated_packages(
        files in proptest::collection::btree_map("[a-z]{1,3}(/[a-z]{1,3}){0,2}", proptest::collection::vec(any::<u8>(), 0..300), 0..5),
        links in proptest::collection::vec(("[a-z]{1,3}", select(vec!["flick.toml", "a", "../x", "/etc/passwd", "b/.."])), 0..3),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        in_tar in any::<bool>(),
    ) {
        // A real package, from a real directory, then damaged.
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("flick.toml"), MANIFEST).unwrap();
        for (path, data) in &files {
            let full = src.path().join(path);
            // A name may be taken by a directory already, or sit below a file.
            if fs::create_dir_all(full.parent().unwrap()).is_ok() {
                let _ = fs::write(&full, data);
            }
        }
        for (name, target) in &links {
            let _ = std::os::unix::fs::symlink(target, src.path().join(name));
        }
        let Ok(archive) = pack_dir(src.path()) else { return Ok(()) };
        let archive = if in_tar {
            // Flip bytes of the tar stream itself (headers, checksums, data).
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&archive[..]), &mut tar).unwrap();
            for (at, byte) in &flips {
                let i = at.index(tar.len());
                tar[i] = *byte;
            }
            gzip(&tar)
        } else {
            let mut archive = archive;
            for (at, byte) in &flips {
                let i = at.index(archive.len());
                archive[i] = *byte;
            }
            archive
        };
        let (outer, result) = unpack_checked(&archive, &UnpackLimits::default())?;
        if let Ok(unpacked) = result {
            check_repack(&outer.path().join("dest"), &unpacked)?;
        }
    }
}

/// A few hostile archives spelled out, so the intent is readable without
/// a generator; each must be refused without a trace outside `dest`.
#[test]
fn fuzz_unpack_known_hostile_archives() {
    let escape_via_symlink = vec![
        RawEntry::file("flick.toml", MANIFEST),
        RawEntry {
            name: b"l".to_vec(),
            kind: b'2',
            link: b"../outside".to_vec(),
            data: vec![],
            declared: None,
            mode: Some(0o777),
        },
        RawEntry::file("l/owned", b"x"),
    ];
    let long_name_escape = vec![
        RawEntry::file("flick.toml", MANIFEST),
        RawEntry {
            name: b"././@LongLink".to_vec(),
            kind: b'L',
            link: vec![],
            data: b"../outside/owned\0".to_vec(),
            declared: None,
            mode: Some(0o644),
        },
        RawEntry::file("innocent", b"x"),
    ];
    let pax_link_escape = vec![
        RawEntry::file("flick.toml", MANIFEST),
        RawEntry {
            name: b"PaxHeaders/l".to_vec(),
            kind: b'x',
            link: vec![],
            data: pax_record("linkpath", b"../../etc"),
            declared: None,
            mode: Some(0o644),
        },
        RawEntry {
            name: b"l".to_vec(),
            kind: b'2',
            link: b"a".to_vec(),
            data: vec![],
            declared: None,
            mode: Some(0o777),
        },
    ];
    let huge_declared = vec![
        RawEntry::file("flick.toml", MANIFEST),
        RawEntry {
            name: b"big".to_vec(),
            kind: b'0',
            link: vec![],
            data: vec![1; 10],
            declared: Some(1 << 33),
            mode: Some(0o644),
        },
    ];
    for (what, entries) in [
        ("symlink", escape_via_symlink),
        ("long name", long_name_escape),
        ("pax linkpath", pax_link_escape),
        ("size", huge_declared),
    ] {
        let archive = gzip(&tar_of(&entries, true));
        let (_outer, result) = unpack_checked(&archive, &UnpackLimits::default()).unwrap();
        assert!(result.is_err(), "{what}: accepted");
    }
}
