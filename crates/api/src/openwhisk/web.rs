//! Web actions: `ANY /api/v1/web/{namespace}/default/{action}[.json|.http|
//! .text|.html|.svg][/{path}]` for actions annotated `web-export` (manifest
//! `web = true`), callable without a key. The request becomes parameters
//! (`__ow_method`, `__ow_headers`, `__ow_path`, `__ow_query`, and the body:
//! a JSON object's fields, else `__ow_body`), and the result becomes the
//! HTTP answer (`statusCode`, `headers`, `body`; base64 bodies for binary
//! content types).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use flick_core::Cause;
use flick_platform::Caller;
use serde_json::{Map, Value, json};

use super::auth::ADMIN_KEY_ID;
use super::invoke::{MAX_WAIT_MS, accepted, caller_gave_up, from_answer, invocation, with_id};
use super::{OwError, OwResult, function_name};
use crate::AppState;

/// What the extension asks of the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    Http,
    Json,
    Text,
    Html,
    Svg,
}

/// `name[.ext]` and the rest of the path (`__ow_path`).
fn split_action(action: &str) -> Result<(&str, Ext, String), OwError> {
    let (first, rest) = match action.find('/') {
        Some(at) => (&action[..at], action[at..].to_string()),
        None => (action, String::new()),
    };
    let (name, ext) = match first.split_once('.') {
        None => (first, Ext::Http),
        Some((name, ext)) => {
            let ext = match ext {
                "http" => Ext::Http,
                "json" => Ext::Json,
                "text" => Ext::Text,
                "html" => Ext::Html,
                "svg" => Ext::Svg,
                _ => {
                    return Err(OwError::BadRequest(format!(
                        "extension '.{}' is not supported (.http, .json, .text, .html, .svg)",
                        super::shown(ext)
                    )));
                }
            };
            (name, ext)
        }
    };
    Ok((name, ext, rest))
}

pub(crate) async fn web(
    State(s): State<AppState>,
    Path((ns, package, action)): Path<(String, String, String)>,
    req: Request<Body>,
) -> OwResult {
    // One namespace; no packages but the default one. Anything else, like
    // an action that is not web-exported, does not exist for this route.
    if (ns != "_" && ns != ADMIN_KEY_ID) || package != "default" {
        return Err(OwError::NotFound);
    }
    let (name, ext, rest) = split_action(&action)?;
    let name = function_name(name).map_err(|_| OwError::NotFound)?;
    let route = s.platform.resolve(&name).await.filter(|r| r.revision.manifest.web).ok_or(OwError::NotFound)?;
    let (parts, body) = req.into_parts();
    // A browser's preflight is answered here, as OpenWhisk does, without a call.
    if parts.method == Method::OPTIONS {
        return Ok(preflight(&parts.headers));
    }
    let body = crate::read_body(body, s.limits.max_body_bytes, &s.limits).await?;

    let mut params = Map::new();
    let query = parts.uri.query().unwrap_or("");
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        params.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    match super::invoke::params_object(&body) {
        Ok(fields) if !body.is_empty() => params.extend(fields),
        Ok(_) => {}
        // Not a JSON object: the body as text, or base64 when it is not text.
        Err(_) => {
            let text = match std::str::from_utf8(&body) {
                Ok(t) => t.to_string(),
                Err(_) => base64::engine::general_purpose::STANDARD.encode(&body),
            };
            params.insert("__ow_body".into(), Value::String(text));
        }
    }
    let trace = crate::trace_of(&parts.headers);
    let mut headers: Map<String, Value> = parts
        .headers
        .iter()
        // The key (any header carrying it) is flick's, never the action's.
        .filter(|(n, v)| *n != header::AUTHORIZATION && !s.keys.appears_in(v.as_bytes()))
        // The trace context the action sees is flick's span (set below).
        .filter(|(n, _)| n.as_str() != "traceparent" && n.as_str() != "tracestate")
        // So is the dashboard's session (its cookie and CSRF token).
        .filter_map(|(n, v)| Some((n, crate::session::forwardable(n.as_str(), v.as_bytes())?)))
        .map(|(n, v)| (n.as_str().to_string(), Value::String(String::from_utf8_lossy(&v).into_owned())))
        .collect();
    headers.insert("traceparent".into(), Value::String(trace.traceparent()));
    if let Some(state) = &trace.tracestate {
        headers.insert("tracestate".into(), Value::String(state.clone()));
    }
    params.insert("__ow_method".into(), json!(parts.method.as_str().to_ascii_lowercase()));
    params.insert("__ow_headers".into(), Value::Object(headers));
    params.insert("__ow_path".into(), json!(rest));
    params.insert("__ow_query".into(), json!(query));

    let inv = invocation(&route, params, Cause::Http)?;
    let inv = flick_core::Invocation { budget_ms: Some(MAX_WAIT_MS), trace: Some(trace), ..inv };
    let start_ms = flick_core::now_ms();
    // Web-exported: it runs for its owner, whoever calls.
    let done = s.platform.invoke(route, Caller::Admin, inv.clone()).await?;
    let id = done.activation_id.as_str().to_string();
    if caller_gave_up(&done) {
        return Ok(accepted(&id));
    }
    let record = from_answer(&inv, &done, start_ms);
    let o = super::activations::outcome(&record, Some(&done.native_response().body), None);
    if !o.success() {
        let message = o.result.get("error").map_or_else(
            || o.result.to_string(),
            |e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        );
        let body = json!({ "error": message, "code": id });
        return Ok(with_id((StatusCode::BAD_GATEWAY, axum::Json(body)).into_response(), &id));
    }
    let mut resp = render(ext, o.result)?;
    // Web actions are public: any origin may read them, unless the action says otherwise.
    resp.headers_mut().entry(header::ACCESS_CONTROL_ALLOW_ORIGIN).or_insert(HeaderValue::from_static("*"));
    Ok(with_id(resp, &id))
}

/// OpenWhisk's default answer to a CORS preflight of a web action.
fn preflight(headers: &axum::http::HeaderMap) -> Response {
    let allow_headers = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned().unwrap_or(
        HeaderValue::from_static("Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent"),
    );
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    resp
}

/// The result as the HTTP answer the extension asks for.
fn render(ext: Ext, result: Value) -> Result<Response, OwError> {
    let field = |key: &str, content_type: &'static str| -> Result<Response, OwError> {
        match result.get(key) {
            Some(Value::String(s)) => Ok(([(header::CONTENT_TYPE, content_type)], s.clone()).into_response()),
            _ => Err(OwError::BadRequest(format!(
                "Response is not valid '{content_type}': the result has no string '{key}'."
            ))),
        }
    };
    match ext {
        Ext::Json => Ok(axum::Json(result).into_response()),
        Ext::Text => field("text", "text/plain; charset=utf-8"),
        Ext::Html => field("html", "text/html; charset=utf-8"),
        Ext::Svg => field("svg", "image/svg+xml"),
        Ext::Http => http_answer(&result),
    }
}

/// `{statusCode, headers, body}` as an HTTP answer.
fn http_answer(result: &Value) -> Result<Response, OwError> {
    let invalid = |why: &str| OwError::BadRequest(format!("Response is not valid 'message/http': {why}."));
    let status = match result.get("statusCode") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .and_then(|n| StatusCode::from_u16(n).ok())
                .ok_or_else(|| invalid("statusCode is not an HTTP status"))?,
        ),
    };
    let mut headers = Vec::new();
    if let Some(h) = result.get("headers") {
        let h = h.as_object().ok_or_else(|| invalid("headers is not an object"))?;
        for (name, value) in h {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => return Err(invalid("a header value is not a string, number or boolean")),
            };
            // Framing is flick's to set for the bytes it sends.
            let lower = name.to_ascii_lowercase();
            if ["content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"]
                .contains(&lower.as_str())
                || lower.starts_with("proxy-")
            {
                continue;
            }
            let n = HeaderName::try_from(name.as_str()).map_err(|_| invalid("a header name is not valid"))?;
            let v = HeaderValue::try_from(value).map_err(|_| invalid("a header value is not valid"))?;
            headers.push((n, v));
        }
    }
    let content_type =
        headers.iter().find(|(n, _)| *n == header::CONTENT_TYPE).and_then(|(_, v)| v.to_str().ok()).map(str::to_string);
    let (bytes, default_type): (Vec<u8>, Option<&str>) = match result.get("body") {
        None | Some(Value::Null) => (Vec::new(), None),
        Some(Value::String(s)) => match &content_type {
            // Binary types carry their bytes in base64 (OpenWhisk's rule).
            Some(ct) if is_binary(ct) => (
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|_| invalid("the body of a binary content type is not base64"))?,
                None,
            ),
            _ => (s.clone().into_bytes(), Some("text/html; charset=utf-8")),
        },
        Some(v) => (v.to_string().into_bytes(), Some("application/json")),
    };
    let status = status.unwrap_or(if bytes.is_empty() { StatusCode::NO_CONTENT } else { StatusCode::OK });
    let mut resp = (status, bytes).into_response();
    if let (None, Some(t)) = (&content_type, default_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
    }
    // The action's first value replaces a default (content-type); repeats
    // (set-cookie) are kept.
    let mut seen = Vec::new();
    for (n, v) in headers {
        if seen.contains(&n) {
            resp.headers_mut().append(n, v);
        } else {
            seen.push(n.clone());
            resp.headers_mut().insert(n, v);
        }
    }
    Ok(resp)
}

/// Content types whose bodies are not text.
fn is_binary(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    !(t.starts_with("text/")
        || t.ends_with("json")
        || t.ends_with("xml")
        || t.ends_with("javascript")
        || t == "application/x-www-form-urlencoded"
        || t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_extensions_and_paths() {
        assert_eq!(split_action("hello").unwrap(), ("hello", Ext::Http, String::new()));
        assert_eq!(split_action("hello.json").unwrap(), ("hello", Ext::Json, String::new()));
        assert_eq!(split_action("hello.http/a/b").unwrap(), ("hello", Ext::Http, "/a/b".into()));
        assert!(split_action("hello.exe").is_err());
    }

    #[test]
    fn http_results_become_answers() {
        let r = http_answer(&json!({"statusCode": 201, "headers": {"x-a": "1"}, "body": "hi"})).unwrap();
        assert_eq!((r.status(), r.headers()["x-a"].to_str().unwrap()), (StatusCode::CREATED, "1"));
        let r = http_answer(&json!({"headers": {"content-type": "image/png"}, "body": "AAEC"})).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(http_answer(&json!({"headers": {"content-type": "image/png"}, "body": "!!"})).is_err());
        assert_eq!(http_answer(&json!({})).unwrap().status(), StatusCode::NO_CONTENT);
        assert!(http_answer(&json!({"statusCode": 1000})).is_err());
    }
}
