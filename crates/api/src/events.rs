//! `POST /events`: CloudEvents over HTTP, in the three content modes of the
//! HTTP binding (binary: `ce-*` headers and the body as data; structured:
//! `application/cloudevents+json`; batched: `application/cloudevents-batch+json`).
//!
//! Every event is parsed and validated before any is routed, so a batch
//! with one malformed event is refused whole (400 naming the attribute and
//! index) and nothing of it runs. Valid events go to
//! [`Platform::publish_event`](flick_platform::Platform::publish_event),
//! which makes one durable async invocation per matching trigger.
//!
//! The admin key is required, public functions or not: an event fans out
//! to every function whose trigger matches it, and who may publish into
//! that is the operator's decision, not each function's.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use flick_core::cloudevent;
use flick_platform::PlatformError;

use crate::{ApiError, AppState};

/// Most events one batch may hold (each may fan out to many functions).
pub const MAX_BATCH: usize = 1000;

pub(crate) async fn post_events(State(state): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    crate::native::admin(&crate::caller::Caller::of(&state.keys, &parts.headers))?;
    let body = crate::read_body(body, state.limits.max_body_bytes, &state.limits).await?;
    let headers: Vec<(&str, &[u8])> = parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let events = cloudevent::from_http(headers.iter().copied(), &body)?;
    let trace = crate::trace_of(&parts.headers);
    if events.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch holds at most {MAX_BATCH} events, this one {}; split it",
            events.len()
        )));
    }
    // The events of a batch are submitted at once, so the queue's group
    // commit takes them in a few fsyncs rather than one each.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, event) in events.into_iter().enumerate() {
        let platform = state.platform.clone();
        let trace = trace.clone();
        tasks.spawn(async move {
            let deliveries = platform.publish_event(&event, trace).await;
            (i, event, deliveries)
        });
    }
    let mut done = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.map_err(|e| ApiError::Platform(PlatformError::Internal(format!("routing an event: {e}"))))?);
    }
    done.sort_by_key(|(i, _, _)| *i);
    let mut out = Vec::with_capacity(done.len());
    let mut routed = 0;
    for (_, event, deliveries) in done {
        // The first failure answers (429/503/507); the events before it
        // are accepted, and a resent batch is deduplicated (README).
        let deliveries = deliveries?;
        routed += deliveries.len();
        out.push(serde_json::json!({
            "id": event.id(),
            "source": event.source(),
            "type": event.ty(),
            "deliveries": deliveries,
        }));
    }
    let mut resp = (StatusCode::ACCEPTED, Json(serde_json::json!({ "events": out, "routed": routed }))).into_response();
    // How many invocations the events became; 0 says no trigger matched.
    resp.headers_mut().insert("x-flick-routed", HeaderValue::from(routed));
    Ok(resp)
}
