//! Who is calling, for every surface: flick's keys ([`Keys`], key id →
//! secret) and the [`Caller`] extractor that reads `Authorization`, or the
//! dashboard's session cookie together with its CSRF header.
//!
//! The extractor never rejects: it says whether the caller proved a key
//! (the admin) or not (anonymous), and whether credentials were sent at
//! all. Each surface decides what an anonymous caller may do and answers a
//! refusal in its own shape. SigV4 signs the body, so the Lambda surface
//! verifies it itself against [`Keys::secret`].
//!
//! Understood: `Bearer <key>` (flick's CLI) and
//! `Basic base64(<id>:<key>)` (OpenWhisk's `uuid:key`, faas-cli's
//! `admin:<key>`). Secrets are compared in constant time, against every
//! key, so timing tells nothing about a secret or which ids exist.
//!
//! Without an `Authorization` header, a dashboard session (`session.rs`)
//! is the caller of its key id, but only when the request carries both the
//! `flick_session` cookie and that session's token in `X-Flick-CSRF`: a
//! browser attaches the cookie to any request, even one another site
//! makes it send, while the header only the dashboard's own script can set.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::AdminKey;
use crate::session::{self, Sessions};

/// The id of the admin key (its user name in Basic auth, its SigV4 access
/// key id).
pub const ADMIN_KEY_ID: &str = "admin";

/// flick's keys: id → secret. Today one entry, the admin key as `admin`.
/// And the dashboard sessions opened with them, which prove a caller only
/// on the dashboard's own listener ([`Keys::with_sessions`]): everywhere
/// else a function's page could be the one sending the cookie.
#[derive(Clone)]
pub struct Keys(Arc<Vec<(String, String)>>, Sessions, bool);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.0.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keys({ids:?}, secrets hidden)")
    }
}

/// What an `Authorization` header proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// No `Authorization` header.
    None,
    /// A key, by its id.
    Key(String),
    /// A header that proves no key: wrong key, unknown id, another scheme,
    /// unreadable base64.
    Invalid,
    /// No `Authorization` header, but a dashboard session's cookie and its
    /// CSRF token: the session's key id.
    Session(String),
}

impl Keys {
    pub fn new(admin: &AdminKey) -> Self {
        Self(Arc::new(vec![(ADMIN_KEY_ID.to_string(), admin.as_str().to_string())]), admin.sessions().clone(), false)
    }

    /// The same keys, and a dashboard session (cookie and CSRF token)
    /// proves its key too: for the dashboard's own listener only.
    pub fn with_sessions(mut self) -> Self {
        self.2 = true;
        self
    }

    /// The dashboard sessions opened with these keys.
    pub(crate) fn sessions(&self) -> &Sessions {
        &self.1
    }

    /// The secret of key `id` (for signatures computed with it: SigV4).
    pub fn secret(&self, id: &str) -> Option<&str> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, s)| s.as_str())
    }

    /// The id of the key whose secret is `secret`.
    pub fn id_of(&self, secret: &[u8]) -> Option<&str> {
        let mut found = None;
        // Every key is compared, so the time taken says nothing of which matched.
        for (id, s) in self.0.iter() {
            if constant_time_eq(secret, s.as_bytes()) && !s.is_empty() {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// The id of the key named `id` with secret `secret`.
    pub fn check_pair(&self, id: &[u8], secret: &[u8]) -> Option<&str> {
        let mut found = None;
        for (i, s) in self.0.iter() {
            let ok = constant_time_eq(id, i.as_bytes()) & constant_time_eq(secret, s.as_bytes());
            if ok && !s.is_empty() {
                found = Some(i.as_str());
            }
        }
        found
    }

    /// What the `Authorization` header of `headers` proves.
    pub(crate) fn credentials(&self, headers: &HeaderMap) -> Credentials {
        let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return if self.2 { self.session(headers) } else { Credentials::None };
        };
        // Two answers to "who are you" are no answer.
        if values.next().is_some() {
            return Credentials::Invalid;
        }
        let Ok(value) = value.to_str() else { return Credentials::Invalid };
        match self.authorization(value) {
            Some(id) => Credentials::Key(id.to_string()),
            None => Credentials::Invalid,
        }
    }

    /// A dashboard session, proved by its cookie and its token in
    /// `X-Flick-CSRF` (one header, one value). Any cookie of that name may
    /// be the session: a sibling site can plant others beside it.
    fn session(&self, headers: &HeaderMap) -> Credentials {
        let mut tokens = headers.get_all(crate::session::CSRF_HEADER).iter();
        let (Some(token), None) = (tokens.next(), tokens.next()) else { return Credentials::None };
        session::cookie_values(headers, session::COOKIE)
            .find_map(|id| self.1.check(id, token.as_bytes()))
            .map_or(Credentials::None, Credentials::Session)
    }

    /// The key id an `Authorization` value proves. The scheme is matched
    /// without regard to case and with any run of blanks after it
    /// (RFC 9110 §11.1).
    fn authorization(&self, value: &str) -> Option<&str> {
        let value = value.trim_matches([' ', '\t']);
        let (scheme, token) = value.split_once([' ', '\t'])?;
        let token = token.trim_start_matches([' ', '\t']);
        if scheme.eq_ignore_ascii_case("bearer") {
            self.id_of(token.as_bytes())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
            let at = decoded.iter().position(|b| *b == b':')?;
            self.check_pair(&decoded[..at], &decoded[at + 1..])
        } else {
            None
        }
    }

    /// Does a header value carry a key's secret in any form: as text
    /// (any scheme, any place in the value) or base64-encoded in one of its
    /// tokens (`Basic base64(id:key)`, `x=base64`)? Such a header is flick's,
    /// never a function's: it is dropped before the request reaches one.
    pub fn appears_in(&self, value: &[u8]) -> bool {
        let secrets: Vec<&[u8]> = self.0.iter().map(|(_, s)| s.as_bytes()).filter(|s| !s.is_empty()).collect();
        let contains = |hay: &[u8]| secrets.iter().any(|k| hay.windows(k.len()).any(|w| w == *k));
        if contains(value) {
            return true;
        }
        // Any padding, standard or URL-safe alphabet: a client may use either.
        const CONFIG: GeneralPurposeConfig =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        const ENGINES: [GeneralPurpose; 2] = [
            GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG),
            GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG),
        ];
        let tokens = value.split(|b| b.is_ascii_whitespace() || matches!(b, b',' | b';'));
        tokens.filter(|t| !t.is_empty()).any(|token| {
            // `name=value`: the value alone too (base64's own `=` only pads the end).
            let after_name = token.iter().position(|b| *b == b'=').map(|at| &token[at + 1..]);
            [Some(token), after_name]
                .into_iter()
                .flatten()
                .any(|t| ENGINES.iter().any(|e| e.decode(t).is_ok_and(|d| contains(&d))))
        })
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller of a request (an extractor that never rejects).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// Admin when a key was proved, else anonymous.
    pub who: flick_platform::Caller,
    /// The id of the key proved.
    pub key_id: Option<String>,
    /// What the `Authorization` header said (a surface may answer a wrong
    /// key differently from a missing one).
    pub credentials: Credentials,
}

impl Caller {
    pub(crate) fn of(keys: &Keys, headers: &HeaderMap) -> Self {
        let credentials = keys.credentials(headers);
        let key_id = match &credentials {
            Credentials::Key(id) | Credentials::Session(id) => Some(id.clone()),
            _ => None,
        };
        let who = if key_id.is_some() { flick_platform::Caller::Admin } else { flick_platform::Caller::Anonymous };
        Self { who, key_id, credentials }
    }

    pub(crate) fn is_admin(&self) -> bool {
        self.who == flick_platform::Caller::Admin
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Keys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&Keys::from_ref(state), &parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn keys() -> Keys {
        Keys::new(&AdminKey::new("s3cret-key".into()))
    }

    fn with_auth(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(axum::http::header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn basic(pair: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    #[test]
    fn the_admin_key_is_proved_by_bearer_or_basic() {
        let keys = keys();
        for v in [
            "Bearer s3cret-key".to_string(),
            "bearer   s3cret-key ".to_string(),
            "BEARER\ts3cret-key".to_string(),
            basic("admin:s3cret-key"),
            format!("basic {}", base64::engine::general_purpose::STANDARD.encode("admin:s3cret-key")),
        ] {
            let c = Caller::of(&keys, &with_auth(&[&v]));
            assert!(c.is_admin(), "{v}");
            assert_eq!(c.key_id.as_deref(), Some("admin"), "{v}");
        }
        assert_eq!(keys.secret("admin"), Some("s3cret-key"));
        assert_eq!(keys.secret("Admin"), None);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }

    #[test]
    fn no_header_is_anonymous_and_says_so() {
        let c = Caller::of(&keys(), &HeaderMap::new());
        assert_eq!((c.who, c.key_id, c.credentials), (flick_platform::Caller::Anonymous, None, Credentials::None));
    }

    #[test]
    fn attackers_get_nothing() {
        let keys = keys();
        for v in [
            "Bearer s3cret-ke".to_string(),
            "Bearer s3cret-key2".to_string(),
            "Bearer S3CRET-KEY".to_string(),
            "Bearers3cret-key".to_string(),
            "s3cret-key".to_string(),
            "Token s3cret-key".to_string(),
            "Bearer s3cret-key extra".to_string(),
            // The raw pair, unencoded, is not Basic.
            "Basic admin:s3cret-key".to_string(),
            // Wrong key, wrong id, no id, no colon, empty.
            basic("admin:wrong"),
            basic("root:s3cret-key"),
            basic("ADMIN:s3cret-key"),
            basic(":s3cret-key"),
            basic("admins3cret-key"),
            basic("admin:"),
            basic("admin:s3cret-key\n"),
            // Malformed base64.
            "Basic !!!!".to_string(),
            "Basic YWRtaW46czNjcmV0LWtleQ".to_string(),
            "Basic".to_string(),
            "Bearer".to_string(),
            "Bearer ".to_string(),
        ] {
            let c = Caller::of(&keys, &with_auth(&[&v]));
            assert!(!c.is_admin(), "{v} must not prove the key");
            assert_eq!(c.key_id, None, "{v}");
            assert_eq!(c.credentials, Credentials::Invalid, "{v}");
        }
        // Two Authorization headers, one of them right: neither counts.
        let c = Caller::of(&keys, &with_auth(&["Bearer wrong", "Bearer s3cret-key"]));
        assert!(!c.is_admin());
        // The key in another header proves nothing.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("s3cret-key"));
        h.insert("proxy-authorization", HeaderValue::from_static("Bearer s3cret-key"));
        assert_eq!(Caller::of(&keys, &h).credentials, Credentials::None);
    }

    #[test]
    fn a_session_needs_its_cookie_and_its_csrf_header() {
        let admin = AdminKey::new("s3cret-key".into());
        let keys = Keys::new(&admin).with_sessions();
        let id = keys.sessions().open("admin").unwrap();
        let csrf = keys.sessions().get(&id).unwrap().csrf;
        let h = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let cookie = format!("other=1; flick_session={id}");
        let ok = Caller::of(&keys, &h(&[("cookie", &cookie), ("x-flick-csrf", &csrf)]));
        assert!(ok.is_admin());
        assert_eq!((ok.key_id.as_deref(), &ok.credentials), (Some("admin"), &Credentials::Session("admin".into())));
        // A planted cookie beside the real one does not hide it.
        let two =
            Caller::of(&keys, &h(&[("cookie", "flick_session=planted"), ("cookie", &cookie), ("x-flick-csrf", &csrf)]));
        assert!(two.is_admin());
        // Another router built from a clone of the key knows the session.
        let both = h(&[("cookie", &cookie), ("x-flick-csrf", &csrf)]);
        assert!(Caller::of(&Keys::new(&admin.clone()).with_sessions(), &both).is_admin());
        // Away from the dashboard's listener a session proves nothing: a
        // function's page there could be the one sending the cookie.
        assert_eq!(Caller::of(&Keys::new(&admin), &both).credentials, Credentials::None);
        for refused in [
            // The cookie alone: what a forged cross-site request carries.
            h(&[("cookie", &cookie)]),
            h(&[("cookie", &cookie), ("x-flick-csrf", "")]),
            h(&[("cookie", &cookie), ("x-flick-csrf", &csrf[..63])]),
            h(&[("cookie", &cookie), ("x-flick-csrf", &id)]),
            h(&[("cookie", &cookie), ("x-flick-csrf", &csrf), ("x-flick-csrf", &csrf)]),
            // The token alone, or with the id somewhere else than the cookie.
            h(&[("x-flick-csrf", &csrf)]),
            h(&[("cookie", &format!("flick_sessionx={id}")), ("x-flick-csrf", &csrf)]),
            h(&[("x-flick-session", &id), ("x-flick-csrf", &csrf)]),
        ] {
            let c = Caller::of(&keys, &refused);
            assert!(!c.is_admin(), "{refused:?}");
            assert_eq!(c.credentials, Credentials::None, "{refused:?}");
        }
        // A wrong Authorization header is not rescued by a session: it decides.
        let c =
            Caller::of(&keys, &h(&[("authorization", "Bearer wrong"), ("cookie", &cookie), ("x-flick-csrf", &csrf)]));
        assert_eq!(c.credentials, Credentials::Invalid);
        // Another key's sessions are not these keys' sessions.
        let other = Keys::new(&AdminKey::new("s3cret-key".into())).with_sessions();
        assert!(!Caller::of(&other, &h(&[("cookie", &cookie), ("x-flick-csrf", &csrf)])).is_admin());
        // Logged out: refused.
        keys.sessions().close(&id);
        assert!(!Caller::of(&keys, &h(&[("cookie", &cookie), ("x-flick-csrf", &csrf)])).is_admin());
    }

    #[test]
    fn an_empty_key_proves_nothing() {
        let keys = Keys::new(&AdminKey::new(String::new()));
        for v in ["Bearer ", "Bearer  x"] {
            assert!(!Caller::of(&keys, &with_auth(&[v])).is_admin(), "{v}");
        }
        assert!(!Caller::of(&keys, &with_auth(&[&basic("admin:")])).is_admin());
        assert!(!keys.appears_in(b"anything"));
    }

    #[test]
    fn the_key_is_found_in_any_header_value_plain_or_base64() {
        let keys = keys();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let url = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for v in [
            "Bearer s3cret-key".to_string(),
            "x=s3cret-key;y".to_string(),
            basic("admin:s3cret-key"),
            basic("someone-else:s3cret-key"),
            format!("Basic\t{}", b64("admin:s3cret-key")),
            format!("Token {}", url("id:s3cret-key")),
            format!("a=1, token={}", b64("xs3cret-key")),
            b64("  s3cret-key  "),
            b64("s3cret-key").trim_end_matches('=').to_string(),
        ] {
            assert!(keys.appears_in(v.as_bytes()), "{v}");
        }
        for v in ["s3cret-ke".to_string(), "S3CRET-KEY".to_string(), basic("admin:s3cret-ke"), "Basic !!!".to_string()]
        {
            assert!(!keys.appears_in(v.as_bytes()), "{v}");
        }
    }
}
