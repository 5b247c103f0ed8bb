//! `POST …/actions/{name}`: invoke an action with its parameters (merged
//! over the action's default `[params]`). `?blocking=true` waits up to 60 s
//! (or `?timeout=` ms) and answers the whole activation (200, or 502 for
//! an application or developer error), or `&result=true` only its result;
//! a call that outlasts the wait, and every non-blocking call (queued
//! durably), answers 202 `{activationId}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use flick_core::{Activation, Cause, Invocation};
use flick_platform::{Caller, InvokeResponse, Route};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::actions::{flag, number};
use super::activations::{document, outcome};
use super::{OwError, OwResult, authorize, function_name};
use crate::AppState;

/// OpenWhisk's longest blocking wait (its controller's default).
pub(super) const MAX_WAIT_MS: u64 = 60_000;

#[derive(Deserialize)]
pub(crate) struct InvokeParams {
    pub(super) blocking: Option<String>,
    result: Option<String>,
    timeout: Option<String>,
}

pub(crate) async fn invoke(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<InvokeParams>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    let key_id = authorize(&s, &parts.headers, &ns)?;
    let blocking = flag("blocking", p.blocking.as_deref())?.unwrap_or(false);
    let result_only = flag("result", p.result.as_deref())?.unwrap_or(false);
    let wait = match number("timeout", p.timeout.as_deref())? {
        None => MAX_WAIT_MS,
        Some(ms) if (1..=MAX_WAIT_MS).contains(&ms) => ms,
        Some(ms) => {
            return Err(OwError::BadRequest(format!("timeout {ms} is out of range 1..={MAX_WAIT_MS} milliseconds")));
        }
    };
    let name = function_name(&name)?;
    let route = s.platform.resolve(&name).await.ok_or(OwError::NotFound)?;
    let body = crate::read_body(body, s.limits.max_body_bytes, &s.limits).await?;
    let params = params_object(&body)?;
    let mut inv = invocation(&route, params, if blocking { Cause::Http } else { Cause::Async })?;
    inv.trace = Some(crate::trace_of(&parts.headers));
    if !blocking {
        let submitted = s.platform.submit(route, Caller::Admin, inv, None).await?;
        return Ok(accepted(submitted.id.as_str()));
    }
    let inv = Invocation { budget_ms: Some(wait), ..inv };
    let start_ms = flick_core::now_ms();
    let done = s.platform.invoke(route, Caller::Admin, inv.clone()).await?;
    if caller_gave_up(&done) {
        return Ok(accepted(done.activation_id.as_str()));
    }
    let record = finished_record(&s, &inv, &done, start_ms).await;
    let body = &done.native_response().body;
    let doc = document(&s, &key_id, &record, Some(body), true).await?;
    let timeout = s.platform.route(&name).map(|r| r.revision.manifest.timeout.as_millis() as u64);
    let status = outcome(&record, Some(body), timeout).http_status();
    let answer = if result_only { doc["response"]["result"].clone() } else { doc };
    Ok(with_id((status, Json(answer)).into_response(), done.activation_id.as_str()))
}

/// The request body as parameters: a JSON object (empty body: none).
pub(super) fn params_object(body: &[u8]) -> Result<Map<String, Value>, OwError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OwError::Malformed("the parameters must be a JSON object".into())),
        Err(e) => Err(OwError::Malformed(e.to_string())),
    }
}

/// The call of `route` with `params` over its default `[params]`, the event
/// itself as the function's input.
pub(super) fn invocation(route: &Route, params: Map<String, Value>, cause: Cause) -> Result<Invocation, OwError> {
    let mut merged: Map<String, Value> = route.revision.manifest.params.clone().into_iter().collect();
    merged.extend(params);
    let body = serde_json::to_vec(&Value::Object(merged)).map_err(|e| OwError::BadRequest(e.to_string()))?;
    let mut inv = Invocation::post(route.revision.function.clone(), cause, body);
    // The parameters are the event: `main(params)` gets them alone.
    inv.presentation = flick_core::Presentation::Direct;
    Ok(inv)
}

/// The caller's wait (blocking `timeout`) ended first: the call runs on.
pub(super) fn caller_gave_up(done: &InvokeResponse) -> bool {
    matches!(done.outcome, flick_platform::Outcome::CallerGaveUp { .. })
}

/// The record of a call just made (its logs are there), or, if it was not
/// kept, one made from the answer.
async fn finished_record(s: &AppState, inv: &Invocation, done: &InvokeResponse, start_ms: i64) -> Activation {
    if let Ok(a) = s.platform.activation(done.activation_id.as_str()).await
        && a.status.is_final()
    {
        return a;
    }
    from_answer(inv, done, start_ms)
}

/// A record of a call made from its answer alone (no logs).
pub(super) fn from_answer(inv: &Invocation, done: &InvokeResponse, start_ms: i64) -> Activation {
    let t = &done.timing;
    Activation {
        end_ms: start_ms + t.total_ms.round() as i64,
        duration_ms: t.total_ms,
        init_ms: t.init_ms,
        wait_ms: t.wait_ms,
        exec_ms: t.exec_ms,
        cold: t.init_ms > 0.0,
        http_status: done.outcome.native_status(),
        ..Activation::of(inv, done.status, start_ms)
    }
}

pub(super) fn accepted(id: &str) -> Response {
    with_id((StatusCode::ACCEPTED, Json(json!({ "activationId": id }))).into_response(), id)
}

pub(super) fn with_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::try_from(id) {
        resp.headers_mut().insert("x-openwhisk-activation-id", v);
    }
    resp
}
