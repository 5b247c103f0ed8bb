//! Who calls the OpenWhisk surface: HTTP Basic with a flick key's id as the
//! user and the key as the password (OpenWhisk's `uuid:key` pair; the admin
//! key's id is `admin`), and which namespace that caller may name.
//!
//! The header itself is read by the shared `caller.rs`.

use axum::http::HeaderMap;

use super::OwError;
use crate::caller::Keys;

/// The id of the admin key: its user name in Basic auth, and its namespace.
pub(crate) const ADMIN_KEY_ID: &str = "admin";

pub(crate) use crate::caller::Credentials;

/// What the `Authorization` header proves (Basic `id:key`, or flick's Bearer).
#[cfg(test)]
fn credentials(headers: &HeaderMap, keys: &Keys) -> Credentials {
    crate::caller::Caller::of(keys, headers).credentials
}

/// The caller's key id, or OpenWhisk's 401.
pub(crate) fn require_key(headers: &HeaderMap, keys: &Keys) -> Result<String, OwError> {
    let caller = crate::caller::Caller::of(keys, headers);
    match (caller.key_id, caller.credentials) {
        (Some(id), _) => Ok(id),
        (None, Credentials::None) => Err(OwError::NoAuth),
        (None, _) => Err(OwError::BadAuth),
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
        use base64::Engine as _;
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_auth_needs_the_admin_id_and_the_key() {
        let key = Keys::new(&crate::AdminKey::new("s3cret".into()));
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
