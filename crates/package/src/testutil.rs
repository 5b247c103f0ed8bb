//! Test helpers: sample function directories and hand-made archives, for
//! the archives no well-behaved tool would write.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};
use tempfile::TempDir;

use crate::{PackageError, UnpackLimits, Unpacked, unpack};

pub(crate) const MANIFEST: &str = "name = \"demo\"\nruntime = \"python3\"\n";

/// A function directory with a manifest, a plain file, an executable, a
/// nested file and a symlink to it.
pub(crate) fn function_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("flick.toml"), MANIFEST).unwrap();
    fs::write(root.join("main.py"), "def handler(event):\n    return event\n").unwrap();
    write_mode(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o700);
    fs::create_dir(root.join("lib")).unwrap();
    fs::write(root.join("lib/util.py"), "X = 1\n").unwrap();
    std::os::unix::fs::symlink("lib/util.py", root.join("util.py")).unwrap();
    dir
}

pub(crate) fn write_mode(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Unpacks into `<outer>/dest`, so a test can check that nothing appeared
/// next to `dest`.
pub(crate) fn unpack_in_new_dir(archive: &[u8], limits: &UnpackLimits) -> (TempDir, Result<Unpacked, PackageError>) {
    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let result = unpack(archive, &dest, limits);
    (outer, result)
}

/// Names of everything in `dir`, sorted.
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A tar written header by header, with names put into the header bytes
/// directly (`Header::set_path` refuses the malicious ones).
pub(crate) struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    pub(crate) fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()) }
    }

    pub(crate) fn manifest(self) -> Self {
        self.file("flick.toml", MANIFEST.as_bytes())
    }

    pub(crate) fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, b"", data, 0o644)
    }

    pub(crate) fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Directory, b"", b"", 0o755)
    }

    pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Symlink, target.as_bytes(), b"", 0o777)
    }

    pub(crate) fn entry(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8], mode: u32) -> Self {
        let mut header = Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    /// A GNU long-name header naming the next entry.
    pub(crate) fn long_name(self, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.entry(b"././@LongLink", EntryType::GNULongName, b"", &data, 0o644)
    }

    /// A pax header with `records` for the next entry.
    pub(crate) fn pax(self, records: &[(&str, &str)]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend(pax_record(key, value));
        }
        self.entry(b"PaxHeaders/x", EntryType::XHeader, b"", &data, 0o644)
    }

    pub(crate) fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    pub(crate) fn gz(self) -> Vec<u8> {
        gzip(&self.tar(), Compression::default())
    }
}

pub(crate) fn gzip(data: &[u8], level: Compression) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), level);
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// `"<len> key=value\n"`, where len counts its own digits.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}
