//! The admin API key: created on first start (checked by `caller.rs`), and
//! the dashboard sessions opened with it (`session.rs`).

use std::path::Path;

/// A bearer token that grants every management and invoke call.
///
/// Its clones share one set of dashboard sessions: each router the binary
/// builds from a clone of the key (the main one, `/v1/triggers`, …) then
/// knows the sessions `/ui/login` opened.
#[derive(Clone)]
pub struct AdminKey {
    key: String,
    sessions: crate::session::Sessions,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(…)")
    }
}

impl AdminKey {
    pub fn new(key: String) -> Self {
        Self { key, sessions: Default::default() }
    }

    /// Reads `<data_dir>/admin.key`, creating it (mode 0600) with a fresh
    /// random key on first start. Returns the key and whether it is new.
    pub fn load_or_create(data_dir: &Path, fresh: impl FnOnce() -> String) -> std::io::Result<(Self, bool)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("admin.key");
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok((Self::new(text.trim().to_string()), false)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key = fresh();
        let tmp = path.with_extension("key.tmp");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(format!("{key}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok((Self::new(key), true))
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub(crate) fn sessions(&self) -> &crate::session::Sessions {
        &self.sessions
    }

    /// Is `value` (an `Authorization` header) this key? The scheme is
    /// matched without regard to case and with any run of blanks after it
    /// (RFC 9110 §11.1); the key is compared in constant time, so timing
    /// reveals nothing about it.
    pub fn matches_header(&self, value: &str) -> bool {
        let value = value.trim_matches([' ', '\t']);
        let Some((scheme, token)) = value.split_once([' ', '\t']) else { return false };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let (a, b) = (token.trim_start_matches([' ', '\t']).as_bytes(), self.key.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Does a request header carry this key in any form (any scheme, any
    /// case, inside a longer value)? Such a header is flick's, never a
    /// function's: it is dropped before the request reaches one.
    pub fn appears_in(&self, value: &[u8]) -> bool {
        let key = self.key.as_bytes();
        !key.is_empty() && value.windows(key.len()).any(|w| w == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_matching() {
        let key = AdminKey::new("abc123".into());
        assert!(key.matches_header("Bearer abc123"));
        assert!(!key.matches_header("Bearer abc124"));
        assert!(!key.matches_header("Bearer abc12"));
        assert!(!key.matches_header("abc123"));
        assert!(!key.matches_header("Basic abc123"));
        // The scheme is case-insensitive and blanks around it are not significant.
        for spelling in ["bearer abc123", "BEARER abc123", "Bearer   abc123", "bEaReR\tabc123 ", " Bearer abc123"] {
            assert!(key.matches_header(spelling), "{spelling}");
        }
        assert!(!key.matches_header("Bearerabc123"));
        assert!(!key.matches_header("Bearer abc123 x"));
    }

    #[test]
    fn the_key_is_found_in_any_header_value() {
        let key = AdminKey::new("abc123".into());
        for v in ["bearer abc123", "Token abc123", "abc123", "x=abc123;y"] {
            assert!(key.appears_in(v.as_bytes()), "{v}");
        }
        assert!(!key.appears_in(b"abc12"));
        assert!(!key.appears_in(b"ABC123"));
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flick-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k1, new1) = AdminKey::load_or_create(&dir, || "first".into()).unwrap();
        let (k2, new2) = AdminKey::load_or_create(&dir, || "second".into()).unwrap();
        assert!(new1 && !new2);
        assert_eq!((k1.as_str(), k2.as_str()), ("first", "first"));
        let mode = std::fs::metadata(dir.join("admin.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
