//! `/api/v1/namespaces/{ns}/triggers[/{name}]`: list, create or update
//! (`?overwrite=true`), get, delete and fire OpenWhisk triggers. A trigger
//! is the platform's rule trigger (`flick_platform::RuleTrigger`); firing
//! one is the platform's action (`Platform::fire`): 202 `{activationId}`
//! when an active rule queued a call, 204 when no rule is active.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use flick_core::now_ms;
use flick_platform::{Rule, RuleTrigger, Saved};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::actions::{ListParams, PutParams, flag, page};
use super::invoke::{accepted, params_object};
use super::package::KeyValue;
use super::{OwError, OwResult, authorize};
use crate::AppState;

/// A trigger's PUT body is small: parameters and annotations.
const MAX_PUT_BYTES: usize = 1 << 20;

/// What a PUT may set (anything else of a trigger document is ignored, as
/// OpenWhisk does, so a client can send back what it read).
#[derive(Deserialize)]
struct PutBody {
    parameters: Option<Vec<KeyValue>>,
    annotations: Option<Vec<KeyValue>>,
}

pub(crate) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let (limit, skip) = page(p.limit.as_deref(), p.skip.as_deref())?;
    let all = s.platform.rule_triggers().await?;
    if flag("count", p.count.as_deref())? == Some(true) {
        return Ok(Json(json!({ "triggers": all.len() })).into_response());
    }
    let out: Vec<Value> = all.iter().skip(skip).take(limit).map(|t| document(&id, t, None)).collect();
    Ok(Json(out).into_response())
}

pub(crate) async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let trigger = s.platform.rule_trigger(&name).await?;
    let rules = s.platform.rules(Some(&name)).await?;
    Ok(Json(document(&id, &trigger, Some(&rules))).into_response())
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let trigger = s.platform.delete_rule_trigger(&name).await?;
    Ok(Json(document(&id, &trigger, None)).into_response())
}

pub(crate) async fn put(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<PutParams>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    let id = authorize(&s, &parts.headers, &ns)?;
    let overwrite = flag("overwrite", p.overwrite.as_deref())?.unwrap_or(false);
    let body = crate::read_body(body, MAX_PUT_BYTES, &s.limits).await?;
    let put: PutBody = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice(b"{}")
    } else {
        serde_json::from_slice(&body)
    }
    .map_err(|e| OwError::Malformed(e.to_string()))?;
    let old = super::replaced(s.platform.rule_trigger(&name), overwrite).await?;
    let now = now_ms();
    let params: Map<String, Value> = match put.parameters {
        Some(list) => list.into_iter().map(|kv| (kv.key, kv.value)).collect::<BTreeMap<_, _>>().into_iter().collect(),
        None => old.as_ref().map(|t| t.params.clone()).unwrap_or_default(),
    };
    let annotations = match put.annotations {
        Some(list) => json!(dedup(list)),
        None => old.as_ref().map_or_else(|| json!([]), |t| t.annotations.clone()),
    };
    let trigger = RuleTrigger {
        name: name.clone(),
        params,
        annotations,
        // The feed is set by invoking it (`lifecycleEvent`), not by the PUT.
        feed: old.as_ref().and_then(|t| t.feed.clone()),
        created_ms: old.as_ref().map_or(now, |t| t.created_ms),
        updated_ms: now,
    };
    match s.platform.put_rule_trigger(trigger.clone(), overwrite).await? {
        Saved::Exists => Err(OwError::Conflict),
        Saved::Created | Saved::Replaced => Ok(Json(document(&id, &trigger, None)).into_response()),
    }
}

/// `POST …/triggers/{name}`: fire it with the body as the event.
pub(crate) async fn fire(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    authorize(&s, &parts.headers, &ns)?;
    // Unknown before the body is read: a missing trigger costs no upload.
    s.platform.rule_trigger(&name).await?;
    let body = crate::read_body(body, s.limits.max_body_bytes, &s.limits).await?;
    let event = params_object(&body)?;
    match s.platform.fire(&name, event, Some(crate::trace_of(&parts.headers))).await? {
        Some(fired) => Ok(accepted(fired.id.as_str())),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Later keys win, as OpenWhisk's key/value lists do.
fn dedup(list: Vec<KeyValue>) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = Vec::new();
    for kv in list {
        out.retain(|o| o.key != kv.key);
        out.push(kv);
    }
    out
}

/// OpenWhisk's trigger document (with its rules when `rules` is given).
fn document(key_id: &str, t: &RuleTrigger, rules: Option<&[Rule]>) -> Value {
    let parameters: Vec<Value> = t.params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    let mut doc = json!({
        "namespace": key_id,
        "name": t.name,
        "version": "0.0.1",
        "publish": false,
        "parameters": parameters,
        "annotations": t.annotations,
        "limits": {},
        "updated": t.updated_ms,
    });
    if let Some(rules) = rules
        && !rules.is_empty()
    {
        let map: Map<String, Value> = rules
            .iter()
            .map(|r| {
                let status = if r.active { "active" } else { "inactive" };
                (
                    format!("{key_id}/{}", r.name),
                    json!({"action": {"name": r.action, "path": key_id}, "status": status}),
                )
            })
            .collect();
        doc["rules"] = Value::Object(map);
    }
    doc
}
