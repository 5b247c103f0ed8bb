//! `ANY /fn/{name}[/{rest}]`: invocation over HTTP, synchronous or (with
//! `X-Flick-Async: true`) accepted into the durable queue with a 202;
//! `Idempotency-Key` and (admin only) `X-Callback-Url` on top.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use flick_core::{ActivationId, Cause, Invocation, Presentation, now_ms};
use flick_platform::{Caller, Idempotent, PlatformError};

use crate::caller::Keys;
use crate::{ApiError, AppState};

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::any;
    axum::Router::new()
        .route("/fn/{name}", any(invoke_root))
        .route("/fn/{name}/", any(invoke_root))
        .route("/fn/{name}/{*rest}", any(invoke_path))
}

async fn invoke_root(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    invoke(state, name, "/".to_string(), req).await
}

async fn invoke_path(
    State(state): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    invoke(state, name, format!("/{rest}"), req).await
}

pub(crate) async fn invoke(
    state: AppState,
    name: String,
    path: String,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    // The route is resolved once: the key check and the call are against
    // the same revision, whatever deploys land during the body upload.
    let route = state.platform.resolve(&name).await;
    // A public function needs no key, but a caller who sends it is the admin.
    let caller = crate::caller::Caller::of(&state.keys, &parts.headers).who;
    if !route.as_ref().is_some_and(|r| r.revision.manifest.public) && caller != Caller::Admin {
        // Checked before revealing whether a private function exists.
        return Err(ApiError::Unauthorized);
    }
    let route = route.ok_or_else(|| PlatformError::FunctionNotFound(name.clone()))?;
    // Headers are checked before the body is read: a bad one costs no upload.
    let is_async = match single_header(&parts.headers, ASYNC_HEADER)? {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(ApiError::BadRequest(format!("X-Flick-Async must be `true` or `false`, got `{}`", shown(v))));
        }
    };
    let idempotency_key = single_header(&parts.headers, IDEMPOTENCY_HEADER)?.map(check_idempotency_key).transpose()?;
    // Anonymous callers cannot be told apart, so their keys would share one
    // space with each other and the admin's: a caller who guessed or saw a
    // key would get someone else's stored result. Keys need the admin key.
    if idempotency_key.is_some() && caller != Caller::Admin {
        return Err(ApiError::Forbidden(
            "Idempotency-Key needs the admin key (anonymous callers' keys would replay others' results)".into(),
        ));
    }
    let callback_url = match single_header(&parts.headers, CALLBACK_HEADER)? {
        None => None,
        // Only the admin may make flick send requests somewhere (else any
        // caller of a public function could aim flick at inner hosts).
        Some(_) if caller != Caller::Admin => {
            return Err(ApiError::Forbidden("X-Callback-Url needs the admin key".into()));
        }
        Some(_) if !is_async => {
            return Err(ApiError::BadRequest("X-Callback-Url is only for async calls (X-Flick-Async: true)".into()));
        }
        Some(v) => Some(check_callback_url(v)?),
    };
    let limit = state.limits.max_body_bytes;
    let body = crate::read_body(body, limit, &state.limits).await?;
    let headers = forwarded_headers(&parts.headers, &state.keys);
    let budget = match parts.headers.get("x-flick-deadline") {
        None => None,
        Some(v) => Some(parse_deadline(v.to_str().unwrap_or(""))?),
    };
    let trace = crate::trace_of(&parts.headers);
    let traceparent = trace.traceparent();
    let inv = Invocation {
        id: ActivationId::generate(),
        function: name,
        method: parts.method.as_str().to_string(),
        path,
        raw_path: raw_sub_path(parts.uri.path()),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.into(),
        budget_ms: budget.map(|b| b.as_millis() as u64),
        cause: if is_async { Cause::Async } else { Cause::Http },
        trigger: None,
        attempt: 1,
        parent: None,
        callback_url,
        accepted_ms: now_ms(),
        presentation: Presentation::Http,
        client_context: None,
        trace: Some(trace),
    };
    if is_async {
        let submitted = state.platform.submit(route, caller, inv, idempotency_key).await?;
        let body = serde_json::json!({
            "activation_id": submitted.id.as_str(),
            "status": "queued",
            "existing": submitted.existing,
        });
        let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
        if let Ok(v) = HeaderValue::try_from(submitted.id.as_str()) {
            resp.headers_mut().insert("x-flick-activation-id", v);
        }
        if submitted.existing {
            resp.headers_mut().insert("x-flick-idempotent-replay", HeaderValue::from_static("true"));
        } else if let Ok(v) = HeaderValue::try_from(traceparent) {
            // The span the queued call will run as (a replay's is the first call's).
            resp.headers_mut().insert("traceparent", v);
        }
        return Ok(resp);
    }
    let done = match idempotency_key {
        None => state.platform.invoke(route, caller, inv).await?,
        Some(key) => match state.platform.invoke_idempotent(route, caller, inv, &key).await? {
            Idempotent::Ran(done) => done,
            Idempotent::Replay(first) => return Ok(replay(&first)),
        },
    };
    // The native rendering of the outcome: the function's own answer, or
    // flick's error body (the same the activation record keeps).
    let answer = done.native_response();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, answer.body).into_response();
    let h = resp.headers_mut();
    copy_function_headers(h, &answer.headers);
    if let Ok(v) = HeaderValue::try_from(done.activation_id.as_str()) {
        h.insert("x-flick-activation-id", v);
    }
    h.insert("x-flick-status", HeaderValue::from_static(done.status.as_str()));
    // flick's span for the call (a function's own `traceparent` header is
    // replaced: the caller is told the span that was recorded).
    if let Ok(v) = HeaderValue::try_from(traceparent) {
        h.insert("traceparent", v);
    }
    let t = &done.timing;
    let init_desc = if t.prewarmed { ";desc=\"prewarmed\"" } else { "" };
    let timing = format!(
        "queue;dur={:.3}, init;dur={:.3}{init_desc}, exec;dur={:.3}, total;dur={:.3}",
        t.wait_ms, t.init_ms, t.exec_ms, t.total_ms
    );
    if let Ok(v) = HeaderValue::try_from(timing) {
        h.insert("server-timing", v);
    }
    Ok(resp)
}

const ASYNC_HEADER: &str = "x-flick-async";
const IDEMPOTENCY_HEADER: &str = "idempotency-key";
const CALLBACK_HEADER: &str = "x-callback-url";
/// Longest `Idempotency-Key` (Stripe's and the IETF draft's keys are far shorter).
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest `X-Callback-Url`.
const MAX_CALLBACK_URL: usize = 2048;

/// A header flick reads itself: absent, or one value of text.
fn single_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(format!("{} was sent more than once", display_name(name))));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("{} must be visible ASCII text", display_name(name))))
}

fn display_name(name: &str) -> &'static str {
    match name {
        ASYNC_HEADER => "X-Flick-Async",
        IDEMPOTENCY_HEADER => "Idempotency-Key",
        CALLBACK_HEADER => "X-Callback-Url",
        _ => "a header",
    }
}

/// A caller's value in an error message: cut, control characters escaped.
fn shown(v: &str) -> String {
    v.chars().take(64).flat_map(char::escape_default).collect()
}

fn check_idempotency_key(v: &str) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > MAX_IDEMPOTENCY_KEY || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters without spaces (got {} bytes)",
            v.len()
        )));
    }
    Ok(v.to_string())
}

fn check_callback_url(v: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("X-Callback-Url {why}"));
    if v.len() > MAX_CALLBACK_URL {
        return Err(bad(&format!("is longer than {MAX_CALLBACK_URL} bytes")));
    }
    let url = url::Url::parse(v).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&format!("must be http or https, not `{}`", shown(url.scheme()))));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    // Credentials would be kept in the queue and shown on the record.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain a user name or password"));
    }
    Ok(url.to_string())
}

/// The first call's stored outcome, for a repeated `Idempotency-Key`: its
/// status and recorded body (capped as records are), not run again.
fn replay(first: &flick_core::Activation) -> Response {
    let status = StatusCode::from_u16(first.http_status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, first.response.clone()).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(first.id.as_str()) {
        h.insert("x-flick-activation-id", v);
    }
    h.insert("x-flick-status", HeaderValue::from_static(first.status.as_str()));
    h.insert("x-flick-idempotent-replay", HeaderValue::from_static("true"));
    if let Some(v) = first.traceparent.as_deref().and_then(|t| HeaderValue::try_from(t).ok()) {
        h.insert("traceparent", v);
    }
    resp
}

/// The caller's headers as the function gets them. flick's keys are
/// flick's, never the function's: a header carrying one in any spelling
/// (`bearer`, `BEARER  `, another scheme, base64 in `Basic`) is dropped. Values that are not
/// utf-8 reach the function with U+FFFD in place of the bad bytes.
fn forwarded_headers(headers: &HeaderMap, keys: &Keys) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(_, v)| !keys.appears_in(v.as_bytes()))
        // Where flick sends the outcome is flick's business, not the function's.
        .filter(|(n, _)| n.as_str() != CALLBACK_HEADER)
        // So is the dashboard's session (its cookie and CSRF token).
        .filter_map(|(n, v)| Some((n, crate::session::forwardable(n.as_str(), v.as_bytes())?)))
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Copies a function's response headers onto flick's response: names or
/// values HTTP cannot carry are dropped, and so is everything hop-by-hop.
fn copy_function_headers(h: &mut HeaderMap, headers: &[(String, String)]) {
    let mut seen = Vec::new();
    let hop = connection_tokens(headers);
    for (name, value) in headers {
        // Framing is flick's to set for the bytes it sends: a function's
        // `content-length` or `transfer-encoding` could otherwise split
        // one answer into two on a keep-alive connection.
        if is_hop_by_hop(name) || hop.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            // The function's first value replaces any default (content-type);
            // repeats (set-cookie) are kept.
            if seen.contains(&n) {
                h.append(n, v);
            } else {
                seen.push(n.clone());
                h.insert(n, v);
            }
        }
    }
}

/// The sub-path after `/fn/{name}` exactly as sent, still percent-encoded:
/// `%2F`, `%3F`, `%23`, `%00` stay text, so no proxy step can turn them into
/// separators, a query, a fragment or a byte a server chokes on.
fn raw_sub_path(uri_path: &str) -> String {
    let rest = uri_path.strip_prefix("/fn/").unwrap_or("");
    match rest.find('/') {
        Some(at) => rest[at..].to_string(),
        None => "/".to_string(),
    }
}

/// Headers that describe the connection or the framing, not the message
/// (RFC 9110 §7.6.1, RFC 9112 §6): never taken from a function's answer.
fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "content-length",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    ];
    let lower = name.to_ascii_lowercase();
    NAMES.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

/// Header names a `Connection` header lists: hop-by-hop as well.
fn connection_tokens(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .collect()
}

/// `X-Flick-Deadline`: the caller's time budget in milliseconds, counted
/// from when flick receives the request.
fn parse_deadline(value: &str) -> Result<std::time::Duration, ApiError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(ApiError::BadRequest(format!(
            "X-Flick-Deadline must be a positive number of milliseconds, got `{value}`"
        ))),
    }
}

#[cfg(test)]
mod fuzz_tests;
