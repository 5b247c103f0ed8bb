//! The dashboard's sessions: opened by `POST /ui/login` with a key, kept in
//! memory (a restart logs everyone out), each with its own CSRF token.
//!
//! A session is carried by the `flick_session` cookie, but the cookie alone
//! proves nothing to the API: [`crate::caller::Caller`] also wants the
//! session's token in `X-Flick-CSRF`. A custom header makes a cross-site
//! request "non-simple", so a browser sends a preflight first, which flick
//! never grants; only the dashboard's own script, which read the token from
//! its page, can send it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "flick_session";
/// The header the dashboard's script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-flick-csrf";
/// How long a session lasts from login (no sliding: a stolen cookie and
/// token stop working at the latest this long after the login).
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; logging in past it ends the oldest. Only a
/// key holder can open one, but a script looping on the login form must not
/// grow memory without bound.
const MAX_SESSIONS: usize = 1024;

/// The open sessions, shared by every clone (and so by every router built
/// from one [`crate::AdminKey`]).
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<[u8; 32], Session>>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} open)", self.lock().len())
    }
}

struct Session {
    key_id: String,
    csrf: String,
    expires: Instant,
}

/// What a valid session cookie names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    pub key_id: String,
    pub csrf: String,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding this lock leaves a plain map behind: usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for key `key_id` (already proved by the caller) and
    /// returns its id, the cookie's value. Its CSRF token is put in the page.
    pub(crate) fn open(&self, key_id: &str) -> Result<String, getrandom::Error> {
        let (id, csrf) = (random_token()?, random_token()?);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else { break };
            map.remove(&oldest);
        }
        map.insert(digest(&id), Session { key_id: key_id.to_string(), csrf, expires: now + TTL });
        Ok(id)
    }

    /// The live session named by cookie value `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Live> {
        let key = digest(id);
        let mut map = self.lock();
        let s = map.get(&key)?;
        if s.expires <= Instant::now() {
            map.remove(&key);
            return None;
        }
        Some(Live { key_id: s.key_id.clone(), csrf: s.csrf.clone() })
    }

    /// The key id of session `id` when `csrf` is its token (compared in
    /// constant time).
    pub(crate) fn check(&self, id: &str, csrf: &[u8]) -> Option<String> {
        let live = self.get(id)?;
        crate::caller::constant_time_eq(csrf, live.csrf.as_bytes()).then_some(live.key_id)
    }

    /// Ends session `id` (logout). Unknown ids are ignored.
    pub(crate) fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }
}

/// Sessions are found by the SHA-256 of their id, so the map's lookup (its
/// hashing and comparisons) never runs on the secret itself.
fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// 256 random bits as 64 hex digits.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The values of cookie `name` in a request's `Cookie` headers (there may be
/// several: a sibling site can plant one of the same name).
pub(crate) fn cookie_values<'a>(headers: &'a axum::http::HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim())
        })
}

/// A request header as a function may see it: the CSRF header is dropped
/// and the session cookie cut out of `Cookie` (the function's own cookies
/// stay). A function called from the dashboard must not be handed the
/// means to act as the dashboard. `None`: nothing is left to forward.
pub(crate) fn forwardable<'a>(name: &str, value: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    use std::borrow::Cow;
    if name.eq_ignore_ascii_case(CSRF_HEADER) {
        return None;
    }
    if !name.eq_ignore_ascii_case("cookie") {
        return Some(Cow::Borrowed(value));
    }
    let is_session = |pair: &[u8]| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
        name.trim_ascii() == COOKIE.as_bytes()
    };
    if !value.split(|b| *b == b';').any(is_session) {
        return Some(Cow::Borrowed(value));
    }
    let kept: Vec<&[u8]> = value.split(|b| *b == b';').filter(|p| !is_session(p)).map(<[u8]>::trim_ascii).collect();
    let kept: Vec<&[u8]> = kept.into_iter().filter(|p| !p.is_empty()).collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join(&b"; "[..])))
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    #[test]
    fn a_session_needs_its_own_token_and_ends_at_logout() {
        let s = Sessions::default();
        let (a, b) = (s.open("admin").unwrap(), s.open("admin").unwrap());
        let (ta, tb) = (s.get(&a).unwrap().csrf, s.get(&b).unwrap().csrf);
        assert_ne!(a, b);
        assert_ne!(ta, tb);
        assert_ne!(a, ta);
        assert_eq!(a.len(), 64);
        assert_eq!(s.check(&a, ta.as_bytes()).as_deref(), Some("admin"));
        // Another session's token, a prefix, the id itself, nothing: refused.
        assert_eq!(s.check(&a, tb.as_bytes()), None);
        assert_eq!(s.check(&a, &ta.as_bytes()[..63]), None);
        assert_eq!(s.check(&a, a.as_bytes()), None);
        assert_eq!(s.check(&a, b""), None);
        assert_eq!(s.check("nope", ta.as_bytes()), None);
        s.close(&a);
        assert_eq!(s.check(&a, ta.as_bytes()), None);
        assert!(s.get(&b).is_some());
        assert!(!format!("{s:?}").contains(&b));
    }

    #[test]
    fn expired_sessions_are_gone() {
        let s = Sessions::default();
        let a = s.open("admin").unwrap();
        s.lock().values_mut().for_each(|v| v.expires = Instant::now());
        assert_eq!(s.get(&a), None);
        assert!(s.lock().is_empty());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.open("admin").unwrap();
        for _ in 0..MAX_SESSIONS + 5 {
            s.open("admin").unwrap();
        }
        assert_eq!(s.lock().len(), MAX_SESSIONS);
        assert_eq!(s.get(&first), None, "the oldest went first");
    }

    #[test]
    fn functions_never_see_the_session() {
        let f = |n: &str, v: &str| forwardable(n, v.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap());
        assert_eq!(f("X-Flick-CSRF", "tok"), None);
        assert_eq!(f("x-flick-csrf", "tok"), None);
        assert_eq!(f("cookie", "flick_session=abc"), None);
        assert_eq!(f("Cookie", " flick_session = abc ;"), None);
        assert_eq!(f("cookie", "a=1; flick_session=abc;b=2").as_deref(), Some("a=1; b=2"));
        // Untouched, byte for byte, when there is no session in it.
        assert_eq!(f("cookie", "a=1;b=2 ; flick_sessionx=3").as_deref(), Some("a=1;b=2 ; flick_sessionx=3"));
        assert_eq!(f("x-other", "flick_session=abc").as_deref(), Some("flick_session=abc"));
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1; flick_session=abc ; b=2"));
        h.append("cookie", HeaderValue::from_static("flick_session=def"));
        h.append("cookie", HeaderValue::from_static("xflick_session=zzz; flick_sessionx=yyy"));
        assert_eq!(cookie_values(&h, COOKIE).collect::<Vec<_>>(), ["abc", "def"]);
    }
}
