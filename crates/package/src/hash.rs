//! The content hash of a package: a function of its tree alone (paths,
//! kinds, exec bits, bytes, link targets), so archiving details — entry
//! order, mtimes, owners, compression, explicit or implied directories —
//! never change it, while any change to the code does.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Bumped if the framing below ever changes, so old and new hashes can
/// never be confused.
const DOMAIN: &[u8] = b"flick-package-hash-v1\0";

/// One node of an unpacked tree, keyed elsewhere by its normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// `explicit`: the archive had an entry for it (otherwise it was implied
    /// by a deeper path). Both hash the same; it only matters for spotting
    /// duplicate entries.
    Dir {
        explicit: bool,
    },
    File {
        exec: bool,
        size: u64,
        digest: [u8; 32],
    },
    Symlink {
        target: String,
    },
}

/// `"sha256:<hex>"` over the tree. Each node contributes a kind byte, its
/// length-prefixed path, its exec bit and its content (a file as size plus
/// the sha256 of its bytes, so files need not be held in memory; a symlink as
/// its length-prefixed target). The kind fixes the layout of the rest, so
/// the encoding is unambiguous.
pub(crate) fn content_hash(tree: &BTreeMap<String, Node>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    for (path, node) in tree {
        let (kind, exec) = match node {
            Node::Dir { .. } => (b'd', false),
            Node::File { exec, .. } => (b'f', *exec),
            Node::Symlink { .. } => (b'l', false),
        };
        hasher.update([kind]);
        update_framed(&mut hasher, path.as_bytes());
        hasher.update([u8::from(exec)]);
        match node {
            Node::Dir { .. } => {}
            Node::File { size, digest, .. } => {
                hasher.update(size.to_be_bytes());
                hasher.update(digest);
            }
            Node::Symlink { target } => update_framed(&mut hasher, target.as_bytes()),
        }
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn update_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(byte: u8, exec: bool) -> Node {
        Node::File { exec, size: 1, digest: Sha256::digest([byte]).into() }
    }

    #[test]
    fn implied_and_explicit_dirs_hash_the_same() {
        let a = BTreeMap::from([("d".to_string(), Node::Dir { explicit: true })]);
        let b = BTreeMap::from([("d".to_string(), Node::Dir { explicit: false })]);
        assert_eq!(content_hash(&a), content_hash(&b));
        assert!(content_hash(&a).starts_with("sha256:"));
        assert_eq!(content_hash(&a).len(), "sha256:".len() + 64);
    }

    #[test]
    fn every_field_counts() {
        let base = BTreeMap::from([("a".to_string(), file(1, false))]);
        let variants = [
            BTreeMap::from([("b".to_string(), file(1, false))]),
            BTreeMap::from([("a".to_string(), file(2, false))]),
            BTreeMap::from([("a".to_string(), file(1, true))]),
            BTreeMap::from([("a".to_string(), Node::Symlink { target: "x".into() })]),
            BTreeMap::from([("a".to_string(), Node::Dir { explicit: true })]),
        ];
        for variant in &variants {
            assert_ne!(content_hash(&base), content_hash(variant));
        }
    }

    #[test]
    fn framing_keeps_paths_and_targets_apart() {
        let a = BTreeMap::from([("ab".to_string(), Node::Symlink { target: "c".into() })]);
        let b = BTreeMap::from([("a".to_string(), Node::Symlink { target: "bc".into() })]);
        assert_ne!(content_hash(&a), content_hash(&b));
    }
}
