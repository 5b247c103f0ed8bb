//! Activations as OpenWhisk shows them: the document of a flick activation
//! record (namespace, name, version, subject, activationId, start, end,
//! duration, logs, response, annotations) and the routes that list and read
//! them (`/activations[/{id}[/logs|/result]]`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use flick_core::{Activation, ActivationStatus, LogLine};
use flick_store::ActivationQuery;
use serde::Deserialize;
use serde_json::{Value, json};

use super::actions::{flag, kind_label, limits_of, number, page, read_meta};
use super::{OwError, OwResult, authorize};
use crate::AppState;

/// How an activation ended, in OpenWhisk's four words.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Outcome {
    pub status: &'static str,
    pub status_code: u8,
    pub result: Value,
}

impl Outcome {
    fn new(status_code: u8, result: Value) -> Self {
        let status = match status_code {
            0 => "success",
            1 => "application error",
            2 => "action developer error",
            _ => "whisk internal error",
        };
        Self { status, status_code, result }
    }

    fn error(status_code: u8, message: impl Into<String>) -> Self {
        Self::new(status_code, json!({ "error": message.into() }))
    }

    pub fn success(&self) -> bool {
        self.status_code == 0
    }

    /// The HTTP status of a blocking invoke with this outcome.
    pub fn http_status(&self) -> axum::http::StatusCode {
        match self.status_code {
            0 => axum::http::StatusCode::OK,
            1 | 2 => axum::http::StatusCode::BAD_GATEWAY,
            _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn response(&self) -> Value {
        json!({
            "status": self.status,
            "statusCode": self.status_code,
            "success": self.success(),
            "result": self.result,
        })
    }
}

/// The outcome of a finished record. `body` is the whole answer when the
/// caller has it (a record keeps at most `response_capture` bytes of it).
pub(super) fn outcome(a: &Activation, body: Option<&[u8]>, timeout_ms: Option<u64>) -> Outcome {
    let text = body.unwrap_or(a.response.as_bytes());
    let truncated = body.is_none() && a.response_truncated;
    match a.status {
        ActivationStatus::Success => {
            if truncated {
                return Outcome::error(
                    2,
                    "The action's result was larger than flick keeps in activation records (response_capture).",
                );
            }
            let parsed: Option<Value> = serde_json::from_slice(text).ok();
            // The HTTP status counts only when the caller saw the function's.
            let refused = a.caller_gave_up_ms.is_none() && a.http_status >= 400;
            match parsed {
                Some(Value::Object(o)) if o.contains_key("error") => Outcome::new(1, Value::Object(o)),
                Some(v @ Value::Object(_)) if refused => Outcome::new(1, json!({ "error": v })),
                Some(v @ (Value::Object(_) | Value::Array(_))) => Outcome::new(0, v),
                Some(_) => Outcome::error(2, "The action did not return a dictionary."),
                None => {
                    let head: String = String::from_utf8_lossy(text).chars().take(200).collect();
                    Outcome::error(2, format!("The action did not produce a valid JSON response: {head}"))
                }
            }
        }
        ActivationStatus::Error => {
            // The native error body: {errorType, errorMessage, stackTrace}.
            let parsed: Option<Value> = serde_json::from_slice(text).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| {
                    let kind = v.get("errorType")?.as_str()?;
                    let message = v.get("errorMessage")?.as_str()?;
                    Some(format!("{kind}: {message}"))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(text).chars().take(1000).collect());
            Outcome::error(1, message)
        }
        ActivationStatus::Timeout => match timeout_ms {
            Some(ms) => Outcome::error(2, format!("The action exceeded its time limits of {ms} milliseconds.")),
            None => Outcome::error(2, "The action exceeded its time limit."),
        },
        ActivationStatus::OutOfMemory => Outcome::error(2, "The action exhausted its memory and was aborted."),
        ActivationStatus::PlatformError | ActivationStatus::Queued | ActivationStatus::Running => Outcome::error(
            3,
            format!(
                "flick could not run the action (a platform fault, not the action's); the operator's log has the \
                 detail under activation {}",
                a.id
            ),
        ),
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `<ISO time> stdout: text`, OpenWhisk's log line.
fn log_line(l: &LogLine) -> String {
    let stream = match l.stream {
        flick_core::LogStream::Stdout => "stdout",
        flick_core::LogStream::Stderr => "stderr",
    };
    format!("{} {stream}: {}", iso(l.ts_ms), l.text)
}

/// The whole activation document (`docs`: with logs and the response).
pub(super) async fn document(
    s: &AppState,
    key_id: &str,
    a: &Activation,
    body: Option<&[u8]>,
    full: bool,
) -> Result<Value, OwError> {
    // Kind and limits are the function's as it is now, if it still is.
    let route = s.platform.route(&a.function);
    let (kind, limits, timeout_ms) = match &route {
        Some(r) => {
            let meta = read_meta(s, &r.revision).await?;
            let timeout = r.revision.manifest.timeout.as_millis() as u64;
            (Some(kind_label(&r.revision, meta.as_ref())), Some(limits_of(&r.revision, meta.as_ref())), Some(timeout))
        }
        None => (None, None, None),
    };
    let outcome = outcome(a, body, timeout_ms);
    let mut annotations = vec![json!({"key": "path", "value": format!("{key_id}/{}", a.function)})];
    if let Some(kind) = kind {
        annotations.push(json!({"key": "kind", "value": kind}));
    }
    if let Some(limits) = limits {
        annotations.push(json!({"key": "limits", "value": limits}));
    }
    annotations.push(json!({"key": "waitTime", "value": a.wait_ms.round() as u64}));
    if a.cold {
        annotations.push(json!({"key": "initTime", "value": a.init_ms.round() as u64}));
    }
    if a.status == ActivationStatus::Timeout {
        annotations.push(json!({"key": "timeout", "value": true}));
    }
    // A rule's call names its trigger's activation as `cause`, without this.
    if a.parent.is_some() && a.cause == flick_core::Cause::Sequence {
        annotations.push(json!({"key": "causedBy", "value": "sequence"}));
    }
    let mut doc = json!({
        "namespace": key_id,
        "name": a.function,
        "version": format!("0.0.{}", a.revision),
        "subject": key_id,
        "activationId": a.id.as_str(),
        "start": a.start_ms,
        "end": a.end_ms,
        "duration": (a.end_ms - a.start_ms).max(0),
        "statusCode": outcome.status_code,
        "annotations": annotations,
        "publish": false,
    });
    if let Some(parent) = &a.parent {
        doc["cause"] = json!(parent.as_str());
    }
    if full {
        doc["response"] = outcome.response();
        doc["logs"] = json!(a.logs.iter().map(log_line).collect::<Vec<_>>());
    }
    Ok(doc)
}

#[derive(Deserialize)]
pub(crate) struct ListParams {
    name: Option<String>,
    since: Option<String>,
    upto: Option<String>,
    limit: Option<String>,
    skip: Option<String>,
    docs: Option<String>,
    count: Option<String>,
}

/// Records looked through when `since`/`upto` narrow the list.
const WINDOW_SCAN: u32 = 10_000;

pub(crate) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let (limit, skip) = page(p.limit.as_deref(), p.skip.as_deref())?;
    let since = number("since", p.since.as_deref())?.map(|n| n as i64);
    let upto = number("upto", p.upto.as_deref())?.map(|n| n as i64);
    let docs = flag("docs", p.docs.as_deref())?.unwrap_or(false);
    let count = flag("count", p.count.as_deref())?.unwrap_or(false);
    let function = match p.name.as_deref() {
        None | Some("") => None,
        // `pkg/name` or an invalid name: no function has it.
        Some(n) => match flick_core::FunctionName::new(n) {
            Ok(n) => Some(n.as_str().to_string()),
            Err(_) => return Ok(Json(if count { json!({"activations": 0}) } else { json!([]) }).into_response()),
        },
    };
    let windowed = since.is_some() || upto.is_some() || count;
    let query = ActivationQuery {
        function,
        limit: if windowed { WINDOW_SCAN } else { (skip + limit) as u32 },
        ..ActivationQuery::default()
    };
    let records: Vec<Activation> = s
        .platform
        .activations(&query)
        .await?
        .into_iter()
        .filter(|a| a.status.is_final())
        .filter(|a| since.is_none_or(|t| a.start_ms >= t) && upto.is_none_or(|t| a.start_ms <= t))
        .collect();
    if count {
        return Ok(Json(json!({ "activations": records.len() })).into_response());
    }
    let mut out = Vec::new();
    for a in records.iter().skip(skip).take(limit) {
        out.push(document(&s, &id, a, None, docs).await?);
    }
    Ok(Json(out).into_response())
}

/// A finished activation, or OpenWhisk's 404 (also while it still runs).
async fn finished(s: &AppState, id: &str) -> Result<Activation, OwError> {
    let a = s.platform.activation(id).await?;
    if a.status.is_final() { Ok(a) } else { Err(OwError::NotFound) }
}

pub(crate) async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> OwResult {
    let key_id = authorize(&s, &headers, &ns)?;
    let a = finished(&s, &id).await?;
    Ok(Json(document(&s, &key_id, &a, None, true).await?).into_response())
}

pub(crate) async fn logs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    let a = finished(&s, &id).await?;
    Ok(Json(json!({ "logs": a.logs.iter().map(log_line).collect::<Vec<_>>() })).into_response())
}

pub(crate) async fn result(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> OwResult {
    authorize(&s, &headers, &ns)?;
    let a = finished(&s, &id).await?;
    let timeout = s.platform.route(&a.function).map(|r| r.revision.manifest.timeout.as_millis() as u64);
    let o = outcome(&a, None, timeout);
    Ok(Json(json!({ "result": o.result, "success": o.success(), "status": o.status })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flick_core::{Cause, Invocation};

    fn record(status: ActivationStatus, http_status: u16, response: &str) -> Activation {
        let inv = Invocation::post("f", Cause::Http, Vec::new());
        Activation { http_status, response: response.into(), ..Activation::of(&inv, status, 0) }
    }

    #[test]
    fn outcomes_in_openwhisks_words() {
        let o = outcome(&record(ActivationStatus::Success, 200, r#"{"a":1}"#), None, None);
        assert_eq!((o.status, o.status_code, o.result), ("success", 0, json!({"a": 1})));
        let o = outcome(&record(ActivationStatus::Success, 200, r#"{"error":"no"}"#), None, None);
        assert_eq!((o.status, o.status_code), ("application error", 1));
        let o = outcome(&record(ActivationStatus::Success, 200, "42"), None, None);
        assert_eq!((o.status_code, o.result), (2, json!({"error": "The action did not return a dictionary."})));
        let o = outcome(&record(ActivationStatus::Success, 200, "not json"), None, None);
        assert_eq!(o.status_code, 2);
        let body = r#"{"errorType":"ValueError","errorMessage":"boom","stackTrace":[]}"#;
        let o = outcome(&record(ActivationStatus::Error, 500, body), None, None);
        assert_eq!((o.status_code, o.result), (1, json!({"error": "ValueError: boom"})));
        let o = outcome(&record(ActivationStatus::Timeout, 504, ""), None, Some(100));
        assert_eq!(o.result, json!({"error": "The action exceeded its time limits of 100 milliseconds."}));
        assert_eq!(outcome(&record(ActivationStatus::PlatformError, 502, ""), None, None).status_code, 3);
        // The caller's whole body wins over the record's capped copy.
        let o = outcome(&record(ActivationStatus::Success, 200, "{\"a\""), Some(br#"{"a":2}"#), None);
        assert_eq!(o.result, json!({"a": 2}));
    }

    #[test]
    fn log_lines_are_iso_time_stream_text() {
        let l = LogLine { ts_ms: 0, stream: flick_core::LogStream::Stderr, text: "hi".into() };
        assert_eq!(log_line(&l), "1970-01-01T00:00:00.000Z stderr: hi");
    }
}
