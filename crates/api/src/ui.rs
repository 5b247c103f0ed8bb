//! `/ui`: the web dashboard. Serves the page shell (with the session's CSRF
//! token in it), the login and logout forms and the embedded assets
//! (`flick-ui`); every figure the page shows comes from `/v1/` through the
//! same [`crate::caller::Caller`] as the CLI's calls (session cookie +
//! `X-Flick-CSRF`, see `session.rs`).
//!
//! Every answer here forbids framing, sniffing and any script or style not
//! served by flick itself (a strict Content-Security-Policy: no inline
//! script at all).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::session::{self, Live};
use crate::{ApiError, AppState};

/// Where the dashboard lives.
const HOME: &str = "/ui";
const LOGIN: &str = "/ui/login";
/// The login and logout forms are a few fields.
const MAX_FORM_BODY: usize = 4 << 10;

/// Only flick's own files, no inline script or style, no framing, forms
/// posted only to flick.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/ui", get(shell))
        .route("/ui/", get(shell))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{*path}", get(asset))
}

/// `GET /` on the dashboard's listener.
pub(crate) async fn home() -> Response {
    redirect(HOME)
}

/// The main listener's `/ui…`: a pointer to the dashboard's own address.
pub(crate) fn elsewhere(at: std::net::SocketAddr) -> axum::Router<AppState> {
    use axum::routing::get;
    let to = move |headers: HeaderMap| async move { pointer(at, &headers) };
    axum::Router::new().route("/ui", get(to)).route("/ui/", get(to)).route("/ui/{*rest}", get(to))
}

/// A redirect to the dashboard at `at`: on the host the browser used when
/// `at` listens on every address, so `localhost` stays `localhost`.
fn pointer(at: std::net::SocketAddr, headers: &HeaderMap) -> Response {
    let asked = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(host_of);
    let host = match (at.ip().is_unspecified(), asked) {
        (true, Some(host)) => host.to_string(),
        _ => match at.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    let to = format!("http://{host}:{}{HOME}", at.port());
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::try_from(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(resp)
}

/// The host of a `Host` header (no port), if it is a plain name or address.
fn host_of(value: &str) -> Option<&str> {
    let host = if value.starts_with('[') {
        &value[..=value.find(']')?]
    } else {
        value.rsplit_once(':').map_or(value, |(h, _)| h)
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!host.is_empty() && host.chars().all(plain)).then_some(host)
}

/// Every answer of the dashboard's listener but the dashboard's own pages
/// runs in a sandbox: a function's HTML, opened here, gets an opaque origin
/// and no script, so it can read neither the dashboard's token nor `/v1`.
/// Appended, not set: a function's own policy still applies as well.
pub(crate) async fn sandbox_all_but_ui(req: Request<Body>, next: axum::middleware::Next) -> Response {
    let ours = req.uri().path() == HOME || req.uri().path().starts_with("/ui/");
    let mut resp = next.run(req).await;
    if !ours {
        resp.headers_mut().append(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
        resp.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

/// The headers every dashboard answer carries.
fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: the latter makes a browser send
    // `Origin: null` with the forms, which `same_origin` cannot trust.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

/// An HTML page (never cached: it may hold a CSRF token).
fn page(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(resp)
}

fn redirect(to: &'static str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(resp)
}

/// The live session the request's cookie names, with that cookie's value.
fn session_of(s: &AppState, headers: &HeaderMap) -> Option<(String, Live)> {
    let sessions = s.keys.sessions();
    session::cookie_values(headers, session::COOKIE).find_map(|id| Some((id.to_string(), sessions.get(id)?)))
}

/// `GET /ui`: the dashboard, or the login page for a browser without a session.
async fn shell(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match session_of(&s, &headers) {
        // The token is 64 hex digits: nothing to escape.
        Some((_, live)) => page(StatusCode::OK, flick_ui::SHELL_HTML.replace("{{csrf}}", &live.csrf)),
        None => redirect(LOGIN),
    }
}

fn login_form(status: StatusCode, error: &str, id: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(error))
    };
    page(status, flick_ui::LOGIN_HTML.replace("{{error}}", &error).replace("{{id}}", &escape(id)))
}

/// `GET /ui/login`
async fn login_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if session_of(&s, &headers).is_some() {
        return redirect(HOME);
    }
    login_form(StatusCode::OK, "", crate::caller::ADMIN_KEY_ID)
}

/// `POST /ui/login` (form: `key`, `id` default `admin`): a right pair opens
/// a session and sets its cookie; a wrong one shows the form again, 401.
async fn login(State(s): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    // Another site could post its own key here and have the browser use
    // flick as that key (login CSRF): only flick's own page may log in.
    if !same_origin(&parts.headers) {
        return Err(ApiError::Forbidden("the login form must be posted from flick's own page".into()));
    }
    let body = crate::read_body(body, MAX_FORM_BODY, &s.limits).await?;
    let (mut id, mut key) = (String::new(), String::new());
    for (name, value) in url::form_urlencoded::parse(&body) {
        match &*name {
            "id" => id = value.into_owned(),
            "key" => key = value.into_owned(),
            _ => {}
        }
    }
    let id = if id.trim().is_empty() { crate::caller::ADMIN_KEY_ID.to_string() } else { id.trim().to_string() };
    let Some(key_id) = s.keys.check_pair(id.as_bytes(), key.trim().as_bytes()).map(str::to_string) else {
        tracing::info!(key_id = %id.escape_debug(), "dashboard login refused");
        return Ok(login_form(StatusCode::UNAUTHORIZED, "Wrong key id or key.", &id));
    };
    // A session cookie this browser still had is replaced: end it too.
    if let Some((old, _)) = session_of(&s, &parts.headers) {
        s.keys.sessions().close(&old);
    }
    let id = s
        .keys
        .sessions()
        .open(&key_id)
        .map_err(|e| ApiError::Platform(flick_platform::PlatformError::Internal(format!("random source: {e}"))))?;
    let mut resp = redirect(HOME);
    let cookie =
        format!("{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", session::COOKIE, id, session::TTL.as_secs());
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::try_from(cookie).expect("hex is a header value"));
    Ok(resp)
}

/// `POST /ui/logout` (form: `csrf`): ends the session on the server and
/// clears the cookie.
async fn logout(State(s): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if !same_origin(&parts.headers) {
        return Err(ApiError::Forbidden("the logout form must be posted from flick's own page".into()));
    }
    let body = crate::read_body(body, MAX_FORM_BODY, &s.limits).await?;
    let csrf = url::form_urlencoded::parse(&body).find(|(n, _)| n == "csrf").map(|(_, v)| v.into_owned());
    if let Some((id, live)) = session_of(&s, &parts.headers) {
        let token = csrf.unwrap_or_default();
        if !crate::caller::constant_time_eq(token.as_bytes(), live.csrf.as_bytes()) {
            return Err(ApiError::Forbidden("logout needs the page's CSRF token".into()));
        }
        s.keys.sessions().close(&id);
    }
    let mut resp = redirect(LOGIN);
    let clear = format!("{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0", session::COOKIE);
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::try_from(clear).expect("a static cookie"));
    Ok(resp)
}

/// `GET /ui/assets/{path}`: an embedded file, revalidated by its `ETag`.
/// No session needed: the login page uses them, and they hold no data.
async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let a = flick_ui::asset(&path).ok_or(ApiError::NoRoute)?;
    let etag = HeaderValue::from_static(a.etag());
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim() == a.etag() || t.trim() == "*")));
    let mut resp = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { a.body.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(harden(resp))
}

/// Was this form posted by a page of this very origin? Browsers send
/// `Sec-Fetch-Site` (current ones) or `Origin` with every POST; a client
/// that sends neither (curl, a test) is no browser to forge a request
/// through.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    // The browser's own word first (its `Origin` may be `null` by policy).
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text(header::ORIGIN.as_str()), text(header::HOST.as_str())) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            let origin = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
            origin.is_some_and(|o| o.eq_ignore_ascii_case(host))
        }
        (Some(_), None) => false,
    }
}

/// Text for HTML (element content and quoted attribute values).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_this_origin_may_post_the_forms() {
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("host", "h:1"), ("origin", "http://h:1")])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin"), ("host", "h:1"), ("origin", "null")])));
        for bad in [
            headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8081")]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            headers(&[("origin", "http://127.0.0.1:8080")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site"), ("host", "h:1"), ("origin", "http://h:1")]),
            headers(&[("sec-fetch-site", "cross-site"), ("host", "h:1"), ("origin", "http://h:1")]),
        ] {
            assert!(!same_origin(&bad), "{bad:?}");
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
