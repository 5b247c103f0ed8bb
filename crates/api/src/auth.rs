//! The admin API key: created on first start, checked on every call.

use std::path::Path;

use axum::http::HeaderMap;

use crate::ApiError;

/// A bearer token that grants every management and invoke call.
#[derive(Clone)]
pub struct AdminKey(String);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(…)")
    }
}

impl AdminKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    /// Reads `<data_dir>/admin.key`, creating it (mode 0600) with a fresh
    /// random key on first start. Returns the key and whether it is new.
    pub fn load_or_create(data_dir: &Path, fresh: impl FnOnce() -> String) -> std::io::Result<(Self, bool)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("admin.key");
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok((Self(text.trim().to_string()), false)),
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
        Ok((Self(key), true))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Is `value` (an `Authorization` header) this key? Compared in
    /// constant time, so timing reveals nothing about the key.
    pub fn matches_header(&self, value: &str) -> bool {
        let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else { return false };
        let (a, b) = (token.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            Some(v) if self.matches_header(v) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
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
