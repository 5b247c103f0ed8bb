//! Property/fuzz tests of `flick_package::zip::read`, from the attacker's
//! side: random bytes, generated zips with hostile names (`..`, absolute,
//! `\`), symlinks, special files and odd modes, and byte-flipped zips.
//!
//! Whatever goes in: no panic; what is accepted holds only relative paths
//! without `..`, symlinks resolving inside, files within the size and entry
//! limits; and it packs (`pack_files`) into a package `unpack` accepts with
//! the same files. A well-formed zip reads back exactly as written, exec
//! bits included.
//!
//! `FLICK_FUZZ_CASES` sets the number of cases per property. See RELIABILITY.md.

use std::io::{Cursor, Write};

use flick_package::{PackedFile, UnpackLimits, pack_files, unpack, zip::read};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

fn config(default: u32) -> Config {
    let cases = std::env::var("FLICK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let persistence = FileFailurePersistence::WithSource("proptest-regressions");
    Config { cases, failure_persistence: Some(Box::new(persistence)), ..Config::default() }
}

const MANIFEST: &str = "name = \"demo\"\nruntime = \"exec\"\nhandler = \"cat\"\n";

#[derive(Clone, Debug)]
enum Kind {
    File {
        mode: u32,
    },
    Dir,
    Symlink {
        target: String,
    },
    /// A raw unix mode in the external attributes: fifos, devices, sockets.
    Raw {
        attrs: u32,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    kind: Kind,
    data: Vec<u8>,
    deflate: bool,
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec!["a", "b", "sub", "flick.toml", "l", "bootstrap", "é"]).prop_map(str::to_string),
        3 => select(vec!["..", ".", ""]).prop_map(str::to_string),
    ]
}

fn name() -> impl Strategy<Value = String> {
    (
        select(vec!["", "", "", "./", "/", "../", "..\\", "\\"]),
        proptest::collection::vec(component(), 1..4),
        select(vec!["/", "\\"]),
    )
        .prop_map(|(prefix, parts, sep)| format!("{prefix}{}", parts.join(sep)))
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (0u32..0o1000).prop_map(|mode| Kind::File { mode }),
        2 => Just(Kind::Dir),
        2 => prop_oneof![name(), select(vec!["a", "../x", "/etc/passwd", "sub/..", "."]).prop_map(str::to_string)]
            .prop_map(|target| Kind::Symlink { target }),
        1 => select(vec![0o010_644u32, 0o020_644, 0o060_644, 0o140_644, 0o170_644])
            .prop_map(|mode| Kind::Raw { attrs: mode << 16 }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let data = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..400),
        1 => (0u8..2, 1usize..5000).prop_map(|(b, n)| vec![b; n]),
    ];
    (name(), kind(), data, any::<bool>()).prop_map(|(name, kind, data, deflate)| Entry { name, kind, data, deflate })
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

/// Writes `entries` as a zip; `None` if the writer itself refuses one.
fn zip_of(entries: &[Entry]) -> Option<Vec<u8>> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        let method = if e.deflate { CompressionMethod::Deflated } else { CompressionMethod::Stored };
        let options = SimpleFileOptions::default().compression_method(method);
        match &e.kind {
            Kind::File { mode } => {
                writer.start_file(e.name.as_str(), options.unix_permissions(*mode)).ok()?;
                writer.write_all(&e.data).ok()?;
            }
            Kind::Dir => writer.add_directory(e.name.as_str(), options).ok()?,
            Kind::Symlink { target } => writer.add_symlink(e.name.as_str(), target.as_str(), options).ok()?,
            Kind::Raw { attrs } => {
                writer.start_file(e.name.as_str(), options.external_attributes(*attrs)).ok()?;
                writer.write_all(&e.data).ok()?;
            }
        }
    }
    Some(writer.finish().ok()?.into_inner())
}

/// What every accepted result must hold, whatever the input was.
fn check_accepted(files: &[PackedFile], limits: &UnpackLimits) -> Result<(), TestCaseError> {
    prop_assert!(files.len() as u64 <= limits.max_entries);
    let total: u64 = files.iter().filter(|f| !f.symlink).map(|f| f.contents.len() as u64).sum();
    prop_assert!(total <= limits.max_unpacked_bytes, "{total} bytes over the limit");
    for file in files {
        prop_assert!(!file.path.starts_with('/'), "absolute path {:?}", file.path);
        prop_assert!(!file.path.split('/').any(|c| c == ".."), "`..` in {:?}", file.path);
        prop_assert!(!file.path.contains('\\'), "`\\` left in {:?}", file.path);
        if file.symlink {
            let target = std::str::from_utf8(&file.contents).unwrap();
            prop_assert!(!target.starts_with('/'), "absolute symlink {target}");
        }
    }
    // It becomes a package that unpacks to the same files.
    let normal = |path: &str| path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/");
    let mut with_manifest = files.to_vec();
    if files.iter().any(|f| normal(&f.path).starts_with("flick.toml/")) {
        // The zip made `flick.toml` a directory: no package can be made.
        prop_assert!(pack_files(&with_manifest).is_err());
        return Ok(());
    }
    // Surfaces write their own manifest in place of any the zip carries.
    with_manifest.retain(|f| normal(&f.path) != "flick.toml");
    with_manifest.push(PackedFile::file("flick.toml", MANIFEST));
    let archive =
        pack_files(&with_manifest).map_err(|e| TestCaseError::fail(format!("accepted but unpackable: {e}")))?;
    let dest = tempfile::tempdir().unwrap();
    match unpack(&archive, dest.path(), &UnpackLimits::default()) {
        Ok(unpacked) => {
            let regular = with_manifest.iter().filter(|f| !f.symlink).count() as u64;
            prop_assert_eq!(unpacked.files, regular);
        }
        Err(e) => return Err(TestCaseError::fail(format!("pack_files output refused by unpack: {e}"))),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_zip_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), limits in limits()) {
        if let Ok(files) = read(&bytes, &limits) {
            check_accepted(&files, &limits)?;
        }
    }

    #[test]
    fn fuzz_zip_hostile_entries(
        entries in proptest::collection::vec(entry(), 0..8),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        limits in prop_oneof![3 => Just(UnpackLimits::default()), 1 => limits()],
    ) {
        let Some(mut bytes) = zip_of(&entries) else { return Ok(()) };
        for (at, byte) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        if let Ok(files) = read(&bytes, &limits) {
            check_accepted(&files, &limits)?;
        }
    }

    #[test]
    fn fuzz_zip_well_formed_round_trip(
        files in proptest::collection::btree_map("[a-z]{1,3}(/[a-z]{1,3}){0,2}", (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()), 1..6),
    ) {
        // Drop paths that would sit below another file (`a` and `a/b`).
        let names: Vec<&String> = files.keys().collect();
        let files: Vec<PackedFile> = files
            .iter()
            .filter(|(path, _)| !names.iter().any(|other| path.starts_with(&format!("{other}/"))))
            .map(|(path, (data, exec))| PackedFile { path: path.clone(), contents: data.clone(), exec: *exec, symlink: false })
            .collect();
        let entries: Vec<Entry> = files
            .iter()
            .map(|f| Entry { name: f.path.clone(), kind: Kind::File { mode: if f.exec { 0o755 } else { 0o644 } }, data: f.contents.clone(), deflate: true })
            .collect();
        let bytes = zip_of(&entries).unwrap();
        let read_back = read(&bytes, &UnpackLimits::default()).unwrap();
        prop_assert_eq!(&read_back, &files);
        check_accepted(&read_back, &UnpackLimits::default())?;
    }
}
