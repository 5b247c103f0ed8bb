//! Who calls the OpenWhisk surface: HTTP Basic with a flick key's id as the
//! user and the key as the password (OpenWhisk's `uuid:key` pair; the admin
//! key's id is `admin`), and which namespace that caller may name.
//!
//! Interim: parses Basic itself against the admin key until the shared
//! `caller.rs` extractor (Keys, Caller) takes over.

use axum::http::HeaderMap;
use base64::Engine as _;

use super::OwError;
use crate::AdminKey;

/// The id of the admin key: its user name in Basic auth, and its namespace.
pub(crate) const ADMIN_KEY_ID: &str = "admin";

/// What the `Authorization` header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A known key: its id (also the name of the caller's namespace).
    Key(String),
    /// No `Authorization` header at all.
    None,
    /// A header that names no key (wrong key, unknown id, unreadable).
    Invalid,
}

pub(crate) fn credentials(headers: &HeaderMap, key: &AdminKey) -> Credentials {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else { return Credentials::None };
    let Ok(value) = value.to_str() else { return Credentials::Invalid };
    // The native surface's bearer form works here too.
    if key.matches_header(value) {
        return Credentials::Key(ADMIN_KEY_ID.into());
    }
    let value = value.trim_matches([' ', '\t']);
    let Some((scheme, token)) = value.split_once([' ', '\t']) else { return Credentials::Invalid };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Credentials::Invalid;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token.trim()) else {
        return Credentials::Invalid;
    };
    let Some(at) = decoded.iter().position(|b| *b == b':') else { return Credentials::Invalid };
    let (id, secret) = (&decoded[..at], &decoded[at + 1..]);
    // Both compared whole and in constant time: timing tells nothing of either.
    let id_ok = constant_time_eq(id, ADMIN_KEY_ID.as_bytes());
    let key_ok = constant_time_eq(secret, key.as_str().as_bytes());
    if id_ok & key_ok { Credentials::Key(ADMIN_KEY_ID.into()) } else { Credentials::Invalid }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller's key id, or OpenWhisk's 401.
pub(crate) fn require_key(headers: &HeaderMap, key: &AdminKey) -> Result<String, OwError> {
    match credentials(headers, key) {
        Credentials::Key(id) => Ok(id),
        Credentials::None => Err(OwError::NoAuth),
        Credentials::Invalid => Err(OwError::BadAuth),
    }
}

/// `_` is the caller's own namespace; its own name works too. flick has
/// one set of functions, so there is one namespace per key and no other.
pub(crate) fn check_namespace(namespace: &str, key_id: &str) -> Result<(), OwError> {
    if namespace == "_" || namespace == key_id {
        Ok(())
    } else {
        Err(OwError::Forbidden(format!(
            "The supplied authentication is not authorized to access '{}'.",
            namespace.chars().take(64).flat_map(char::escape_default).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_auth_needs_the_admin_id_and_the_key() {
        let key = AdminKey::new("s3cret".into());
        assert_eq!(credentials(&basic("admin:s3cret"), &key), Credentials::Key("admin".into()));
        for bad in ["admin:s3cre", "admin:s3cret ", "guest:s3cret", "s3cret", ":s3cret", "admin:"] {
            assert_eq!(credentials(&basic(bad), &key), Credentials::Invalid, "{bad}");
        }
        assert_eq!(credentials(&HeaderMap::new(), &key), Credentials::None);
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(credentials(&h, &key), Credentials::Invalid);
        h.insert(axum::http::header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(credentials(&h, &key), Credentials::Key("admin".into()));
    }

    #[test]
    fn only_the_callers_namespace() {
        assert!(check_namespace("_", "admin").is_ok());
        assert!(check_namespace("admin", "admin").is_ok());
        assert!(matches!(check_namespace("guest", "admin"), Err(OwError::Forbidden(_))));
    }
}
