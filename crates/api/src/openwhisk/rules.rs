//! `/api/v1/namespaces/{ns}/rules[/{name}]`: list, create or update
//! (`?overwrite=true`, body `{trigger, action}` as fully qualified names
//! `/_/name` or `/ns/name`, as the npm client sends them), get (with
//! `status`), delete, and `POST {"status": "active"|"inactive"}` to turn a
//! rule on or off. A rule is the platform's (`flick_platform::Rule`): its
//! trigger must exist, and its action is a flick function.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request};
use axum::response::IntoResponse;
use flick_core::now_ms;
use flick_platform::{PlatformError, Rule, Saved};
use serde::Deserialize;
use serde_json::{Value, json};

use super::actions::{ListParams, PutParams, flag, no_packages, page};
use super::package::KeyValue;
use super::{OwError, OwResult, authorize, shown};
use crate::AppState;

const MAX_BODY_BYTES: usize = 64 << 10;

#[derive(Deserialize)]
struct PutBody {
    trigger: Option<String>,
    action: Option<String>,
    status: Option<String>,
    annotations: Option<Vec<KeyValue>>,
}

#[derive(Deserialize)]
struct StatusBody {
    status: Option<String>,
}

pub(crate) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    Query(p): Query<ListParams>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    let (limit, skip) = page(p.limit.as_deref(), p.skip.as_deref())?;
    let all = s.platform.rules(None).await?;
    if flag("count", p.count.as_deref())? == Some(true) {
        return Ok(Json(json!({ "rules": all.len() })).into_response());
    }
    let out: Vec<Value> = all.iter().skip(skip).take(limit).map(|r| document(&id, r)).collect();
    Ok(Json(out).into_response())
}

pub(crate) async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    Ok(Json(document(&id, &s.platform.rule(&name).await?)).into_response())
}

pub(crate) async fn delete(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> OwResult {
    let id = authorize(&s, &headers, &ns)?;
    Ok(Json(document(&id, &s.platform.delete_rule(&name).await?)).into_response())
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
    let body = crate::read_body(body, MAX_BODY_BYTES, &s.limits).await?;
    let put: PutBody = serde_json::from_slice(&body).map_err(|e| OwError::Malformed(e.to_string()))?;
    let trigger = entity_name(&id, "trigger", put.trigger.as_deref())?;
    let action = entity_name(&id, "action", put.action.as_deref())?;
    let old = super::replaced(s.platform.rule(&name), overwrite).await?;
    let active = match put.status.as_deref() {
        Some(s) => status(s)?,
        // A new rule is active; an update keeps the rule's status.
        None => old.as_ref().is_none_or(|r| r.active),
    };
    let now = now_ms();
    let rule = Rule {
        name,
        trigger,
        action,
        active,
        annotations: match put.annotations {
            Some(a) => json!(a),
            None => old.as_ref().map_or_else(|| json!([]), |r| r.annotations.clone()),
        },
        created_ms: old.as_ref().map_or(now, |r| r.created_ms),
        updated_ms: now,
    };
    let saved = s.platform.put_rule(rule.clone(), overwrite).await.map_err(|e| match e {
        PlatformError::FunctionNotFound(a) => OwError::Missing(format!("action '{}' does not exist", shown(&a))),
        PlatformError::NotFound { what, name } => OwError::Missing(format!("{what} '{}' does not exist", shown(&name))),
        e => e.into(),
    })?;
    match saved {
        Saved::Exists => Err(OwError::Conflict),
        Saved::Created | Saved::Replaced => Ok(Json(document(&id, &rule)).into_response()),
    }
}

/// `POST …/rules/{name}` with `{"status": "active"|"inactive"}`.
pub(crate) async fn set_status(
    State(s): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    authorize(&s, &parts.headers, &ns)?;
    let body = crate::read_body(body, MAX_BODY_BYTES, &s.limits).await?;
    let put: StatusBody = serde_json::from_slice(&body).map_err(|e| OwError::Malformed(e.to_string()))?;
    let text = put.status.ok_or_else(|| OwError::BadRequest("status is missing: send active or inactive".into()))?;
    s.platform.set_rule_active(&name, status(&text)?).await?;
    Ok(Json(json!({})).into_response())
}

fn status(text: &str) -> Result<bool, OwError> {
    match text {
        "active" => Ok(true),
        "inactive" => Ok(false),
        other => Err(OwError::BadRequest(format!("status must be active or inactive, got '{}'", shown(other)))),
    }
}

/// `/ns/name`, `ns/name` or `name` (the caller's namespace only).
pub(super) fn entity_name(key_id: &str, field: &str, text: Option<&str>) -> Result<String, OwError> {
    let text = text.ok_or_else(|| OwError::BadRequest(format!("{field} is missing")))?;
    let parts: Vec<&str> = text.strip_prefix('/').unwrap_or(text).split('/').collect();
    match parts.as_slice() {
        [name] if !name.is_empty() => Ok(name.to_string()),
        [ns, name] if !name.is_empty() => {
            super::auth::check_namespace(ns, key_id)?;
            Ok(name.to_string())
        }
        [_, package, _] => Err(no_packages(package)),
        _ => Err(OwError::BadRequest(format!("{field} '{}' is not /namespace/name", shown(text)))),
    }
}

/// OpenWhisk's rule document.
fn document(key_id: &str, r: &Rule) -> Value {
    json!({
        "namespace": key_id,
        "name": r.name,
        "version": "0.0.1",
        "publish": false,
        "status": if r.active { "active" } else { "inactive" },
        "trigger": {"name": r.trigger, "path": key_id},
        "action": {"name": r.action, "path": key_id},
        "annotations": r.annotations,
        "updated": r.updated_ms,
    })
}
